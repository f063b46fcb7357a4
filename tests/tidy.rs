//! Tidy checks on the source tree, in the spirit of rust-analyzer's `tidy.rs`: rules of the
//! layout that the compiler does not enforce.
//!
//! - Only `src/nats/subjects.rs` spells a subject, stream, consumer, bucket or KV key name.
//! - The pure core (`src/protocol/`) uses neither `async_nats` nor `tokio`.
//! - No function in `src/` is longer than [`FUNCTION_LINES_MAX`] lines, but those allowed
//!   below, each with its reason.
//! - Every source file (`src/`, `tests/`, `benches/`) starts with a `//!` doc.
//! - No `allow(clippy::too_many_arguments)`: arguments that could be swapped go in a struct.
//! - `anyhow` only in the binary (`src/bin/`): the library's errors keep a kind to match on.
//! - No instant as `f64` seconds in `src/` (`now: f64`, `created_at: f64`, `deadline: f64`):
//!   an instant is a `Timestamp`, which only does arithmetic with `Duration`, so seconds and
//!   instants, or a deadline and a timeout, cannot be mixed up. The wire keeps its numbers
//!   because `Timestamp` serialises as one.
//!
//! Each check first proves it can fail, on a sample that breaks its rule.

use std::fs;
use std::path::{Path, PathBuf};

/// Longest function, in lines from its `fn` to its closing brace.
const FUNCTION_LINES_MAX: usize = 80;

/// Functions allowed to be longer, as (file, function, reason).
const LONG_FUNCTIONS: &[(&str, &str, &str)] = &[
    // Over the limit when the tidy check landed (with main's merge); each to be split by the
    // area that owns it.
    (
        "src/bin/sagefed/bench.rs",
        "delegation",
        "a benchmark's setup and measurement, to split",
    ),
    (
        "src/ledger/service.rs",
        "command_for",
        "one arm per operation, to split per operation",
    ),
    (
        "src/observe/feed.rs",
        "view",
        "the dashboard's view, to split per panel",
    ),
    (
        "src/ledger/audit.rs",
        "audit",
        "one pass per invariant over one snapshot, each a few lines; to split into one \
         function per invariant when the audit next changes",
    ),
    (
        "src/worker/run.rs",
        "process",
        "the executor's checks in the order the design fixes, read top to bottom; each step \
         is already its own function",
    ),
    (
        "src/bin/sagefed/bench.rs",
        "task_round_trip",
        "a benchmark's setup, worker, dispatcher and measurement in one place, as measured",
    ),
    (
        "src/ledger/rules_table.rs",
        "rows",
        "the table of ledger cases: one row per case, read top to bottom",
    ),
    (
        "src/ledger/rules_table.rs",
        "witness_rows",
        "the table of witness cases: one row per case, read top to bottom",
    ),
    (
        "src/worker/checks_table.rs",
        "each_check_refuses_with_its_reason",
        "the table of the executor's checks: one row per case",
    ),
];

/// The subjects module: the one place that spells names on NATS.
const SUBJECTS_FILE: &str = "src/nats/subjects.rs";

/// How a string that names something on NATS starts: subjects (`sage.delegate.Thor`),
/// JetStream API and advisory subjects, KV subjects and streams, inboxes. (Other names, such
/// as consumers and the bench's, are caught by matching the subjects module's own strings.)
const NAME_PREFIXES: &[&str] = &["sage.", "$JS.", "$KV.", "KV_", "_INBOX."];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the repository), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![repo().join(dir)];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).to_string_lossy().into_owned()
}

/// A file split into its code (strings and comments blanked, lines kept) and its string
/// literals with their line numbers.
struct Lexed {
    code: String,
    strings: Vec<(usize, String)>,
}

/// A small Rust lexer: enough to tell code from comments, strings and char literals.
fn lex(text: &str) -> Lexed {
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut strings = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                code.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                line += usize::from(chars[i] == '\n');
                code.push(blank(chars[i]));
                i += 1;
            }
            code.push_str("  ");
            i += 2;
        } else if c == '"' || (c == 'r' && (next == Some('"') || next == Some('#')) && is_raw_start(&chars, i)) {
            let start_line = line;
            let mut literal = String::new();
            let hashes = if c == 'r' {
                code.push(' ');
                i += 1;
                let mut n = 0;
                while chars[i] == '#' {
                    code.push(' ');
                    n += 1;
                    i += 1;
                }
                Some(n)
            } else {
                None
            };
            code.push(' ');
            i += 1; // the opening quote
            while let Some(&ch) = chars.get(i) {
                if hashes.is_none() && ch == '\\' {
                    literal.push(ch);
                    literal.push(chars.get(i + 1).copied().unwrap_or(' '));
                    code.push_str("  ");
                    line += usize::from(chars.get(i + 1) == Some(&'\n'));
                    i += 2;
                    continue;
                }
                if ch == '"' {
                    let n = hashes.unwrap_or(0);
                    if (1..=n).all(|k| chars.get(i + k) == Some(&'#')) {
                        for _ in 0..=n {
                            code.push(' ');
                        }
                        i += n + 1;
                        break;
                    }
                }
                line += usize::from(ch == '\n');
                literal.push(ch);
                code.push(blank(ch));
                i += 1;
            }
            strings.push((start_line, literal));
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x', '\n', '\''); a lifetime has no closing quote.
            let end = (i + 1..chars.len())
                .find(|&k| chars[k] == '\'' && (k > i + 2 || chars[k - 1] != '\\'))
                .unwrap_or(i);
            for _ in i..=end {
                code.push(' ');
            }
            i = end + 1;
        } else {
            line += usize::from(c == '\n');
            code.push(c);
            i += 1;
        }
    }
    Lexed { code, strings }
}

/// Whether the `r` at `i` starts a raw string (`r"`, `r#"`) rather than ending an identifier.
fn is_raw_start(chars: &[char], i: usize) -> bool {
    let before = i.checked_sub(1).map(|k| chars[k]);
    if before.is_some_and(|b| b.is_alphanumeric() || b == '_') {
        return false;
    }
    let mut k = i + 1;
    while chars.get(k) == Some(&'#') {
        k += 1;
    }
    chars.get(k) == Some(&'"')
}

/// Strings in `text` that spell a NATS name, as (line, string): one with a subject's or
/// stream's shape, or one that `names` (the subjects module's own strings) holds.
fn spelled_names(text: &str, names: &[String]) -> Vec<(usize, String)> {
    lex(text)
        .strings
        .into_iter()
        .filter(|(_, s)| NAME_PREFIXES.iter().any(|p| s.starts_with(p)) || is_stream_name(s) || names.contains(s))
        .collect()
}

/// `text` without its unit tests (a `#[cfg(test)]` module), which may spell a hostile name
/// as data (a forged `reply_to`).
fn without_unit_tests(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]" && text[offset + line.len()..].trim_start().contains("mod ") {
            let next = text[offset + line.len()..].lines().next().unwrap_or("");
            if next.contains("mod ") && next.trim_end().ends_with('{') {
                return &text[..offset];
            }
        }
        offset += line.len();
    }
    text
}

/// The names the subjects module spells (its strings outside its tests), but format strings.
fn subjects_module_names() -> Vec<String> {
    let text = fs::read_to_string(repo().join(SUBJECTS_FILE)).expect("read the subjects module");
    lex(without_unit_tests(&text))
        .strings
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| !s.contains('{') && s.len() > 1)
        .collect()
}

/// `SAGE_TASKS`, `BENCH_ROUND_TRIP`: the streams' names (environment variables are
/// `SAGE_<SECTION>__<KEY>`, `SAGE_LOG` and `SAGE_TOOLS_DIR`, and are not streams).
fn is_stream_name(s: &str) -> bool {
    const STREAMS: &[&str] = &["SAGE_TASKS", "SAGE_PROOFS", "SAGE_DEAD", "BENCH_"];
    STREAMS.iter().any(|name| s.contains(name))
}

/// Functions longer than the maximum, as (name, first line, lines).
fn long_functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = lex(text).code;
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        // Find the body's opening brace (or a `;`: a declaration without a body).
        let mut depth = 0usize;
        let mut opened = false;
        let mut end = None;
        'lines: for (k, l) in lines.iter().enumerate().skip(index) {
            for ch in l.chars() {
                match ch {
                    ';' if !opened && depth == 0 => break 'lines,
                    '{' => {
                        opened = true;
                        depth += 1;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            end = Some(k);
                            break 'lines;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(end) = end {
            let length = end - index + 1;
            if length > FUNCTION_LINES_MAX {
                found.push((name, index + 1, length));
            }
        }
    }
    found
}

/// The name of the function a line declares, if it does.
fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "pub" | "async" | "const" | "unsafe" | "extern" | "default" => {}
            w if w.starts_with("pub(") => {}
            "fn" => {
                let rest = words.next()?;
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                return (!name.is_empty()).then_some(name);
            }
            _ => return None,
        }
    }
    None
}

/// Whether `text` uses `async_nats` or `tokio` in code (comments and strings aside).
fn uses_io_runtime(text: &str) -> bool {
    let code = lex(text).code;
    ["async_nats", "tokio"].iter().any(|name| {
        code.match_indices(name).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = code[at + name.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    })
}

/// Names that hold an instant: `now`, `deadline`, `until`, and anything `_at`.
fn names_an_instant(name: &str) -> bool {
    matches!(name, "now" | "deadline" | "until" | "at") || name.ends_with("_at")
}

/// Fields and parameters in `text` that name an instant yet are typed `f64` seconds, as
/// (line, name). Comments, strings and unit tests aside.
fn instants_in_seconds(text: &str) -> Vec<(usize, String)> {
    let code = lex(text).code;
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        for pattern in [": f64", ": Option<f64>"] {
            for (at, _) in line.match_indices(pattern) {
                let before = &line[..at];
                let start = before
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                let name = &before[start..];
                if names_an_instant(name) {
                    found.push((number + 1, name.to_owned()));
                }
            }
        }
    }
    found
}

fn starts_with_module_doc(text: &str) -> bool {
    text.trim_start().starts_with("//!")
}

#[test]
fn the_checks_catch_what_they_forbid() {
    let sample = r##"fn f() {
    let subject = format!("sage.delegate.{}", x); // "sage.in.a.comment" is fine
    let raw = r#"KV_sage_ledger"#;
    let c = '"'; let l: &'static str = "SAGE_TASKS";
    let env = "SAGE_TOOLS_DIR";
}
"##;
    let names: Vec<String> = spelled_names(sample, &[]).into_iter().map(|(_, s)| s).collect();
    assert_eq!(names, ["sage.delegate.{}", "KV_sage_ledger", "SAGE_TASKS"]);
    let consumer = spelled_names("let c = \"worker-\";", &["worker-".to_owned()]);
    assert_eq!(consumer, [(1, "worker-".to_owned())]);
    let with_tests = "fn f() {}\n#[cfg(test)]\nmod tests {\n    const S: &str = \"sage.x\";\n}\n";
    assert_eq!(without_unit_tests(with_tests), "fn f() {}\n");
    let long = format!(
        "pub async fn big() {{\n{}}}\nfn small() {{}}\n",
        "    x();\n".repeat(FUNCTION_LINES_MAX)
    );
    assert_eq!(long_functions(&long), [("big".to_owned(), 1, FUNCTION_LINES_MAX + 2)]);
    let braces_in_strings = format!(
        "fn f() {{\n    let s = \"}}\";\n{}}}\n",
        "    x();\n".repeat(FUNCTION_LINES_MAX)
    );
    assert_eq!(long_functions(&braces_in_strings).len(), 1);
    assert!(uses_io_runtime("use tokio::sync::oneshot;"));
    assert!(uses_io_runtime("fn f() -> async_nats::Client {}"));
    assert!(!uses_io_runtime(
        "// no tokio here\nlet s = \"tokio\"; let my_tokio_thing = 1;"
    ));
    assert_eq!(
        instants_in_seconds(
            "struct T {\n    pub created_at: f64,\n    until: Option<f64>,\n    quality: f64,\n}\nfn f(now: f64, x: f64) {}\n"
        ),
        [
            (2, "created_at".to_owned()),
            (3, "until".to_owned()),
            (6, "now".to_owned())
        ]
    );
    assert!(instants_in_seconds("// now: f64 in a comment\nlet s = \"at: f64\"; fn f(now: Timestamp) {}").is_empty());
    assert!(!starts_with_module_doc("use std::fs;\n//! late"));
    assert!(starts_with_module_doc("\n//! The doc.\nuse std::fs;"));
}

#[test]
fn only_the_subjects_module_spells_names_on_nats() {
    let files = rust_files("src");
    assert!(files.iter().any(|f| relative(f) == SUBJECTS_FILE));
    let names = subjects_module_names();
    assert!(names.iter().any(|n| n == "sage_ledger"), "{names:?}");
    let mut found = Vec::new();
    for file in files {
        let path = relative(&file);
        if path == SUBJECTS_FILE {
            continue;
        }
        let text = fs::read_to_string(&file).expect("read");
        for (line, name) in spelled_names(without_unit_tests(&text), &names) {
            found.push(format!("{path}:{line}: {name:?}"));
        }
    }
    assert!(
        found.is_empty(),
        "names on NATS spelled outside {SUBJECTS_FILE} (add a constant or builder there):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_instant_is_f64_seconds() {
    let files = rust_files("src");
    assert!(files.iter().any(|f| relative(f) == "src/protocol/clock.rs"));
    let mut found = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read");
        for (line, name) in instants_in_seconds(without_unit_tests(&text)) {
            found.push(format!("{}:{line}: {name}: f64", relative(&file)));
        }
    }
    assert!(
        found.is_empty(),
        "instants as f64 seconds (use protocol::clock::Timestamp; a wire number of seconds that is \
         a span, not an instant, takes a name that says so, such as `hold_seconds`):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_pure_core_uses_no_async_nats_or_tokio() {
    let files = rust_files("src/protocol");
    assert!(!files.is_empty());
    let found: Vec<String> = files
        .iter()
        .filter(|f| uses_io_runtime(&fs::read_to_string(f).expect("read")))
        .map(|f| relative(f))
        .collect();
    assert!(found.is_empty(), "src/protocol/ is pure, yet these use I/O: {found:?}");
}

#[test]
fn no_function_is_longer_than_the_maximum() {
    let mut found = Vec::new();
    let mut allowed_seen = Vec::new();
    for file in rust_files("src") {
        let path = relative(&file);
        let text = fs::read_to_string(&file).expect("read");
        for (name, line, length) in long_functions(&text) {
            if LONG_FUNCTIONS.iter().any(|(f, n, _)| *f == path && *n == name) {
                allowed_seen.push((path.clone(), name));
            } else {
                found.push(format!("{path}:{line}: fn {name} is {length} lines"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "functions longer than {FUNCTION_LINES_MAX} lines (split them, or allow one in LONG_FUNCTIONS with a reason):\n{}",
        found.join("\n")
    );
    for (file, name, reason) in LONG_FUNCTIONS {
        assert!(!reason.is_empty());
        assert!(
            allowed_seen.iter().any(|(f, n)| f == file && n == name),
            "{file}: fn {name} is allowed to be long but is not (any more): remove it from LONG_FUNCTIONS"
        );
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let files: Vec<PathBuf> = ["src", "tests", "benches"].iter().flat_map(|d| rust_files(d)).collect();
    assert!(files.len() > 50, "found only {} files", files.len());
    let found: Vec<String> = files
        .iter()
        .filter(|f| !starts_with_module_doc(&fs::read_to_string(f).expect("read")))
        .map(|f| relative(f))
        .collect();
    assert!(found.is_empty(), "source files without a `//!` doc: {found:?}");
}

#[test]
fn no_function_allows_too_many_arguments() {
    let lint = ["too_many", "arguments"].join("_");
    assert!(uses_lint(
        &format!("#[allow(clippy::{lint})] // why\nfn f() {{}}"),
        &lint
    ));
    assert!(!uses_lint(
        &format!("// clippy::{lint} is refused here\nfn f() {{}}"),
        &lint
    ));
    let files: Vec<PathBuf> = ["src", "tests", "benches"].iter().flat_map(|d| rust_files(d)).collect();
    let found: Vec<String> = files
        .iter()
        .filter(|f| uses_lint(&fs::read_to_string(f).expect("read"), &lint))
        .map(|f| relative(f))
        .collect();
    assert!(
        found.is_empty(),
        "put the arguments in a struct instead of allowing {lint}: {found:?}"
    );
}

/// Whether `text`'s code (comments and strings aside) names the clippy lint `lint`.
fn uses_lint(text: &str, lint: &str) -> bool {
    lex(text).code.contains(&format!("clippy::{lint}"))
}

#[test]
fn only_the_binary_uses_anyhow() {
    let name = ["any", "how"].concat();
    assert!(uses_crate(&format!("fn f() -> {name}::Result<()> {{}}"), &name));
    assert!(!uses_crate(&format!("// {name} is for the binary\nfn f() {{}}"), &name));
    let library: Vec<PathBuf> = rust_files("src")
        .into_iter()
        .filter(|f| !relative(f).starts_with("src/bin/"))
        .collect();
    assert!(library.len() > 50, "found only {} library files", library.len());
    let found: Vec<String> = library
        .iter()
        .filter(|f| uses_crate(&fs::read_to_string(f).expect("read"), &name))
        .map(|f| relative(f))
        .collect();
    assert!(
        found.is_empty(),
        "library files using {name} (give the boundary a typed error with a kind and its source): {found:?}"
    );
}

/// Whether `text`'s code (comments and strings aside) names the crate `name`.
fn uses_crate(text: &str, name: &str) -> bool {
    lex(text).code.contains(&format!("{name}::"))
}
