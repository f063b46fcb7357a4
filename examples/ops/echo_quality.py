#!/usr/bin/env python3
"""An example external operation for sagefed: counts the words of a text.

Plug it in from a platform config (paths are relative to the config file's directory,
which is also the directory the program runs in):

    [operations.wordcount]
    command = ["python3", "../examples/ops/echo_quality.py"]
    atp_per_second = 1.0

Protocol (src/worker/ops/external.rs):
  stdin   {"operation": "wordcount", "parameters": {...}, "budget": <ATP>, "timeout_seconds": <s>}
  stdout  {"result": {...}, "quality": <0..1>}, optionally with "atp_consumed": <ATP>, which
          can lower the CPU-metered charge but never raise it
  failure a message on stderr and a non-zero exit status

The program gets only PATH and HOME in its environment, is killed at its timeout, and its
address space is limited to the platform's permissions.memory_mb.

Parameters: "text" (a string). Result: word_count, distinct_words, longest_word and the
first 200 characters of the text. Quality: the fraction of words made only of letters, a
crude "is this prose" score, so that gibberish earns less than language.
"""

import json
import sys

ECHO_CHARS_MAX = 200


def main() -> int:
    request = json.load(sys.stdin)
    text = request.get("parameters", {}).get("text")
    if not isinstance(text, str):
        print('parameter "text" must be a string', file=sys.stderr)
        return 2
    words = text.split()
    alphabetic = sum(1 for w in words if w.strip(".,;:!?'\"()").isalpha())
    result = {
        "word_count": len(words),
        "distinct_words": len({w.lower() for w in words}),
        "longest_word": max(words, key=len, default=""),
        "echo": text[:ECHO_CHARS_MAX],
    }
    quality = alphabetic / len(words) if words else 0.0
    json.dump({"result": result, "quality": quality}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
