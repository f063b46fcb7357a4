//! Operations run by an external program, so that a real model plugs in without Rust.
//!
//! Protocol: the program gets `{"operation", "parameters", "budget" (ATP), "timeout_seconds"}`
//! as JSON on stdin, then end of file, and prints `{"result": {...}, "quality": 0..1}` on
//! stdout, optionally with `"atp_consumed"`. On failure it exits non-zero and says why on
//! stderr. `examples/ops/echo_quality.py` is a complete example.
//!
//! Limits, so that one task cannot hurt the platform:
//! - descendants: the program's parent is a per-run keeper (see `keeper`), a child subreaper
//!   below which every descendant stays, even one that called `setsid`. When the program
//!   exits the keeper kills and reaps what is left, then exits as the program did; at the
//!   timeout, or when the future is dropped, the worker kills the keeper's whole tree (see
//!   `sweep`). No descendant outlives its run, and other runs' processes are not touched.
//! - memory: `RLIMIT_AS` of `memory_mb` MiB, set in the child before it executes. This limits
//!   address space, not resident memory: runtimes that reserve large virtual ranges up front
//!   (the JVM, Go, CUDA) need a limit well above what they use.
//! - CPU: `RLIMIT_CPU` of the seconds the budget buys at `atp_per_second` (plus a grace
//!   second); files: `RLIMIT_FSIZE` [`EXTERNAL_FILE_BYTES_MAX`] and `RLIMIT_NOFILE`
//!   [`EXTERNAL_OPEN_FILES_MAX`]; processes: `RLIMIT_NPROC` [`EXTERNAL_USER_PROCESSES_MAX`]
//!   (per user, and not applied to root).
//! - the platform's secret key: the program inherits no open file of the worker (Rust opens
//!   files close-on-exec) and no environment but `PATH` and `HOME`. A worker running as root
//!   runs the program as `operations.NAME.run_as` (default `nobody`) with no supplementary
//!   groups, so it cannot read the 0600 key file. A worker that is not root cannot change
//!   user: the program can read what the worker reads; give the worker a user of its own.
//! - output: stdout beyond [`EXTERNAL_STDOUT_BYTES_MAX`] is refused; the last
//!   [`EXTERNAL_STDERR_TAIL_BYTES_MAX`] of stderr are kept for error messages.
//! - environment: only `PATH` and `HOME`, so the platform's secrets do not leak.
//!
//! The program name (`command[0]`) is looked up on `PATH` when it has no `/`; a relative path
//! is resolved against the config file's directory, which is also where the program runs.
//!
//! ATP: the run's CPU time (user + system of the program and of every descendant, all reaped
//! by the keeper, from `wait4` on the keeper) times `atp_per_second`, capped at the budget. A self-reported
//! `atp_consumed` may lower that charge, never raise it: the platform does not bill for work
//! it did not see. Time spent on a GPU is not CPU time; price it into `atp_per_second`.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{Operation, OperationError, OperationInput, OperationOutput, check_result_size, keeper, sweep, user};
use crate::protocol::atp::{Atp, MICROS_PER_ATP};

/// Most bytes a program may print on stdout: a reply, not a data stream.
pub const EXTERNAL_STDOUT_BYTES_MAX: usize = 1024 * 1024;

/// Bytes of the end of stderr kept for the error message of a failed run.
pub const EXTERNAL_STDERR_TAIL_BYTES_MAX: usize = 2 * 1024;

/// How long to wait for a killed program to be reaped before leaving that to a background
/// thread (a process in uninterruptible sleep dies only when its I/O returns).
const KILLED_REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What runtimes print on stderr when an allocation fails: such a failure is the memory limit.
const OUT_OF_MEMORY_MARKERS: [&str; 4] = ["MemoryError", "bad_alloc", "out of memory", "Cannot allocate memory"];

const BYTES_PER_MIB: u64 = 1024 * 1024;

/// Most files a program may hold open at once (`RLIMIT_NOFILE`).
pub const EXTERNAL_OPEN_FILES_MAX: u64 = 256;
/// Largest file a program may write (`RLIMIT_FSIZE`), in bytes.
pub const EXTERNAL_FILE_BYTES_MAX: u64 = 64 * BYTES_PER_MIB;
/// Most processes the program's user may have when the program forks (`RLIMIT_NPROC`): the
/// kernel counts every process and thread of that user, and does not apply it to root.
pub const EXTERNAL_USER_PROCESSES_MAX: u64 = 4096;
/// CPU seconds a program gets beyond what its budget buys, before SIGXCPU; SIGKILL follows
/// one second later.
const EXTERNAL_CPU_GRACE_SECONDS: u64 = 1;

/// The resource limits set in the child before it executes.
#[derive(Clone, Copy, Debug)]
struct ChildLimits {
    memory_bytes: u64,
    cpu_seconds: u64,
}

impl ChildLimits {
    /// `memory_mb` of address space; the CPU seconds `budget` buys at `atp_per_second` (or,
    /// for a free operation, the timeout's), plus a grace second.
    fn new(memory_mb: u64, budget: Atp, atp_per_second: Atp, timeout: Duration) -> Self {
        let bought = match atp_per_second.micros() {
            0 => timeout.as_secs(),
            rate => budget.micros().div_ceil(rate),
        };
        Self {
            memory_bytes: memory_mb.saturating_mul(BYTES_PER_MIB),
            cpu_seconds: bought.saturating_add(EXTERNAL_CPU_GRACE_SECONDS),
        }
    }

    /// `(resource, soft, hard)` for setrlimit(2).
    fn table(self) -> [(libc::__rlimit_resource_t, u64, u64); 5] {
        [
            (libc::RLIMIT_AS, self.memory_bytes, self.memory_bytes),
            (libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds.saturating_add(1)),
            (libc::RLIMIT_FSIZE, EXTERNAL_FILE_BYTES_MAX, EXTERNAL_FILE_BYTES_MAX),
            (libc::RLIMIT_NOFILE, EXTERNAL_OPEN_FILES_MAX, EXTERNAL_OPEN_FILES_MAX),
            (
                libc::RLIMIT_NPROC,
                EXTERNAL_USER_PROCESSES_MAX,
                EXTERNAL_USER_PROCESSES_MAX,
            ),
        ]
    }
}

/// An operation run by an external program.
#[derive(Clone, Debug)]
pub struct ExternalOperation {
    name: String,
    command: Vec<String>,
    base_dir: PathBuf,
    atp_per_second: Atp,
    run_as: String,
}

impl ExternalOperation {
    pub fn new(name: &str, command: Vec<String>, base_dir: &Path, atp_per_second: Atp, run_as: &str) -> Self {
        Self {
            name: name.to_owned(),
            command,
            base_dir: base_dir.to_owned(),
            atp_per_second,
            run_as: run_as.to_owned(),
        }
    }

    /// The program to execute: a bare name as given (found on `PATH`), a relative path
    /// resolved against `base_dir`.
    fn program(&self) -> Option<PathBuf> {
        let first = self.command.first()?;
        let path = Path::new(first);
        if path.is_relative() && first.contains('/') {
            Some(self.base_dir.join(path))
        } else {
            Some(path.to_owned())
        }
    }

    async fn execute(self, input: OperationInput) -> Result<OperationOutput, OperationError> {
        let program = self.program().ok_or_else(|| {
            OperationError::Failed(format!(
                "operation `{}` has an empty command; set operations.{}.command in the platform config",
                self.name, self.name
            ))
        })?;
        if input.memory_mb == 0 {
            return Err(OperationError::ResourceLimit(
                "the memory limit is 0 MiB, in which no program can start; raise permissions.memory_mb".to_owned(),
            ));
        }
        let request = json!({
            "operation": self.name,
            "parameters": input.parameters,
            "budget": input.budget.as_f64(),
            "timeout_seconds": input.timeout.as_secs_f64(),
        });
        let request = serde_json::to_vec(&request).map_err(|e| OperationError::Failed(format!("request: {e}")))?;
        let shown = program.display().to_string();

        let limits = ChildLimits::new(input.memory_mb, input.budget, self.atp_per_second, input.timeout);
        let mut running = self.spawn(&program, limits)?;
        let talk = async {
            let (stdout, stderr) = converse(&mut running, request).await?;
            let exit = (&mut running.exit).await;
            Ok::<_, OperationError>((stdout, stderr, exit))
        };
        let (stdout, stderr, exit) = match tokio::time::timeout(input.timeout, talk).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                running.kill_and_reap().await;
                return Err(e);
            }
            Err(_) => {
                running.kill_and_reap().await;
                return Err(OperationError::TimedOut { after: input.timeout });
            }
        };
        let exit = exit
            .map_err(|e| OperationError::Failed(format!("waiting for `{shown}`: {e}")))?
            .map_err(|e| OperationError::Failed(format!("waiting for `{shown}`: {e}")))?;

        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        if !exit.status.success() {
            let cpu_signal = exit.status.signal() == Some(libc::SIGXCPU)
                || (exit.status.signal() == Some(libc::SIGKILL) && exit.cpu.as_secs() >= limits.cpu_seconds);
            if cpu_signal {
                return Err(OperationError::ResourceLimit(format!(
                    "`{shown}` used the {} CPU seconds its budget buys: {stderr}",
                    limits.cpu_seconds
                )));
            }
            if OUT_OF_MEMORY_MARKERS.iter().any(|m| stderr.contains(m)) {
                return Err(OperationError::ResourceLimit(format!(
                    "`{shown}` ran out of memory under the limit of {} MiB (permissions.memory_mb): {stderr}",
                    input.memory_mb
                )));
            }
            return Err(OperationError::Failed(format!("`{shown}` {}: {stderr}", exit.status)));
        }
        let reply = parse_reply(&stdout).map_err(|why| OperationError::Failed(format!("`{shown}` {why}")))?;
        check_result_size(&reply.result)?;

        let cpu_micros = exit.cpu.as_micros();
        let per_second = u128::from(self.atp_per_second.micros());
        let metered = u64::try_from(cpu_micros * per_second / u128::from(MICROS_PER_ATP)).unwrap_or(u64::MAX);
        let mut atp_consumed = Atp::from_micros(metered).min(input.budget);
        if let Some(reported) = reply.atp_consumed {
            atp_consumed = atp_consumed.min(reported);
        }
        Ok(OperationOutput {
            result: reply.result,
            quality: reply.quality,
            atp_consumed,
        })
    }

    fn spawn(&self, program: &Path, limits: ChildLimits) -> Result<Running, OperationError> {
        let mut command = Command::new(program);
        command
            .args(&self.command[1..])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that one signal reaches everything it starts.
            .process_group(0);
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        if !self.base_dir.as_os_str().is_empty() {
            command.current_dir(&self.base_dir);
        }
        if user::worker_is_root() {
            // std clears the supplementary groups (root's) when it sets the uid.
            let account = user::lookup(&self.run_as, &self.name)?;
            command.uid(account.uid).gid(account.gid);
        }
        let table = limits.table().map(|(resource, soft, hard)| {
            (
                resource,
                libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                },
            )
        });
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: the keeper's split (the limits are then the
        // program's alone), setrlimit(2) on values captured by copy; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                keeper::split()?;
                for (resource, limit) in &table {
                    if libc::setrlimit(*resource, limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| self.start_error(program, &e))?;
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(OperationError::Failed(format!(
                "process id {} is out of range",
                child.id()
            )));
        };
        let process = Arc::new(Process {
            pid,
            reaped: Mutex::new(false),
        });
        // From here on the waiter reaps the child whatever happens, and the guard kills it if
        // this future is dropped first.
        let waiter = Arc::clone(&process);
        let exit = tokio::task::spawn_blocking(move || waiter.wait());
        let kill_on_drop = KillOnDrop(Arc::clone(&process));
        let pipe_err = |e: io::Error| OperationError::Failed(format!("connecting to `{}`: {e}", program.display()));
        let missing = || OperationError::Failed("a pipe to the program was not opened".to_owned());
        let stdin = tokio::process::ChildStdin::from_std(child.stdin.take().ok_or_else(missing)?).map_err(pipe_err)?;
        let stdout =
            tokio::process::ChildStdout::from_std(child.stdout.take().ok_or_else(missing)?).map_err(pipe_err)?;
        let stderr =
            tokio::process::ChildStderr::from_std(child.stderr.take().ok_or_else(missing)?).map_err(pipe_err)?;
        Ok(Running {
            stdin: Some(stdin),
            stdout,
            stderr,
            exit,
            kill_on_drop,
        })
    }
}

impl ExternalOperation {
    /// Why `program` did not start, and which settings to check.
    fn start_error(&self, program: &Path, e: &io::Error) -> OperationError {
        let user = if user::worker_is_root() {
            format!(
                " (it runs as `{}`, operations.{}.run_as, who must be able to run it and enter that directory)",
                self.run_as, self.name
            )
        } else {
            String::new()
        };
        OperationError::Failed(format!(
            "cannot start `{}` in {}: {e}; check operations.{}.command in the platform config{user}",
            program.display(),
            self.base_dir.display(),
            self.name
        ))
    }
}

impl Operation for ExternalOperation {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, input: OperationInput) -> BoxFuture<'static, Result<OperationOutput, OperationError>> {
        Box::pin(self.clone().execute(input))
    }
}

/// How a program ended.
struct Exit {
    status: ExitStatus,
    cpu: Duration,
}

/// A child process, killed and reaped without ever signalling a reused pid.
struct Process {
    pid: libc::pid_t,
    /// Set, under the lock, once the child is reaped; `kill` reads it under the same lock, so
    /// it never signals a pid (or group id) that the system may have handed to another process.
    reaped: Mutex<bool>,
}

impl Process {
    /// SIGKILL to every descendant of the child (those that left its group or session too),
    /// to its process group and to the child itself, unless it is reaped.
    fn kill(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        if !*reaped {
            sweep::kill_tree(self.pid);
            signal_group(self.pid);
        }
    }

    /// Blocks until the child exits, kills what is left of its group, then reaps it.
    fn wait(&self) -> io::Result<Exit> {
        wait_for_exit_without_reaping(self.pid)?;
        let mut reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        // The exited, unreaped child still holds its pid, so its group id is still ours.
        signal_group(self.pid);
        let (status, usage) = reap(self.pid)?;
        *reaped = true;
        let time = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1_000);
        Ok(Exit {
            status: ExitStatus::from_raw(status),
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
        })
    }
}

fn signal_group(pid: libc::pid_t) {
    // SAFETY: kill(2) has no memory effects; callers guarantee `pid` is an unreaped child of
    // ours, so neither it nor its process group id can belong to another process.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

fn wait_for_exit_without_reaping(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is a plain C struct for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid and writable for the duration of the call.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn reap(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is a plain C struct for which all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid and writable for the duration of the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((status, usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Kills the program when the run is dropped before it ended (the caller gave up).
struct KillOnDrop(Arc<Process>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// A started program: its pipes and the thread that will reap it.
struct Running {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    exit: JoinHandle<io::Result<Exit>>,
    kill_on_drop: KillOnDrop,
}

impl Running {
    async fn kill_and_reap(self) {
        self.kill_on_drop.0.kill();
        let _ = tokio::time::timeout(KILLED_REAP_TIMEOUT, self.exit).await;
    }
}

/// Writes the request and reads stdout and stderr at once: a program may answer before it has
/// read all of its input, and one that fills the stderr pipe blocks until someone reads it.
async fn converse(running: &mut Running, request: Vec<u8>) -> Result<(Vec<u8>, Vec<u8>), OperationError> {
    let stdin = running.stdin.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A program that exits without reading its input is judged by its exit status and
            // output, not by the broken pipe.
            let _ = stdin.write_all(&request).await;
        }
        Ok(())
    };
    let (_, stdout, stderr) =
        tokio::try_join!(write, read_bounded(&mut running.stdout), read_tail(&mut running.stderr))?;
    Ok((stdout, stderr))
}

async fn read_bounded(stdout: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, OperationError> {
    let mut out = Vec::new();
    stdout
        .take(EXTERNAL_STDOUT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| OperationError::Failed(format!("reading the program's stdout: {e}")))?;
    if out.len() > EXTERNAL_STDOUT_BYTES_MAX {
        return Err(OperationError::ResourceLimit(format!(
            "the program printed more than {EXTERNAL_STDOUT_BYTES_MAX} bytes on stdout; it must print one JSON reply"
        )));
    }
    Ok(out)
}

async fn read_tail(stderr: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, OperationError> {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let n = stderr
            .read(&mut chunk)
            .await
            .map_err(|e| OperationError::Failed(format!("reading the program's stderr: {e}")))?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > EXTERNAL_STDERR_TAIL_BYTES_MAX {
            tail.drain(..tail.len() - EXTERNAL_STDERR_TAIL_BYTES_MAX);
        }
    }
}

/// What a program prints on stdout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReply {
    result: Map<String, Value>,
    quality: f64,
    #[serde(default)]
    atp_consumed: Option<f64>,
}

struct Reply {
    result: Map<String, Value>,
    quality: f64,
    atp_consumed: Option<Atp>,
}

fn parse_reply(stdout: &[u8]) -> Result<Reply, String> {
    let raw: RawReply = serde_json::from_slice(stdout).map_err(|e| {
        format!("did not print a JSON reply {{\"result\": {{...}}, \"quality\": <0..1>}} on stdout: {e}")
    })?;
    if !(raw.quality.is_finite() && (0.0..=1.0).contains(&raw.quality)) {
        return Err(format!(
            "reported quality {}; it must be a number from 0 to 1",
            raw.quality
        ));
    }
    let atp_consumed = raw
        .atp_consumed
        .map(|a| Atp::from_f64(a, "atp_consumed"))
        .transpose()
        .map_err(|e| format!("reported an invalid {e}"))?;
    Ok(Reply {
        result: raw.result,
        quality: raw.quality,
        atp_consumed,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const BUDGET: Atp = Atp::from_micros(100 * MICROS_PER_ATP);

    fn manifest_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn op(command: &[&str]) -> ExternalOperation {
        let command = command.iter().map(|s| (*s).to_owned()).collect();
        ExternalOperation::new(
            "test_op",
            command,
            &manifest_dir(),
            Atp::from_micros(MICROS_PER_ATP),
            "nobody",
        )
    }

    fn input(parameters: Value, timeout: Duration) -> OperationInput {
        OperationInput {
            parameters: parameters.as_object().cloned().expect("an object"),
            budget: BUDGET,
            timeout,
            memory_mb: 512,
        }
    }

    /// A temporary directory the program can write, though it may run as another user.
    fn writable_tempdir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        dir
    }

    /// A shell command that swallows its input, then prints `reply`.
    fn replying(reply: &str) -> ExternalOperation {
        op(&["sh", "-c", &format!("cat >/dev/null; printf '%s' '{reply}'")])
    }

    async fn run(op: &ExternalOperation, input: OperationInput) -> Result<OperationOutput, OperationError> {
        op.run(input).await
    }

    /// Whether `pid` is a live process (a zombie is dead, just not yet buried).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn the_python_example_counts_words() {
        let example = op(&["examples/ops/echo_quality.py"]);
        let out = run(
            &example,
            input(json!({"text": "the quick brown fox 123 !!"}), Duration::from_secs(30)),
        )
        .await
        .expect("runs");
        assert_eq!(out.result["word_count"], 6);
        assert_eq!(out.result["longest_word"], "quick");
        assert!((out.quality - 4.0 / 6.0).abs() < 1e-12, "{}", out.quality);
        assert!(out.atp_consumed <= BUDGET);

        let err = run(&example, input(json!({"txt": "x"}), Duration::from_secs(30))).await;
        match err {
            Err(OperationError::Failed(why)) => assert!(why.contains("\"text\" must be a string"), "{why}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_request_carries_operation_parameters_budget_and_timeout() {
        let echo = op(&[
            "python3",
            "-c",
            "import json, sys; r = json.load(sys.stdin); print(json.dumps({'result': r, 'quality': 0.25}))",
        ]);
        let out = run(&echo, input(json!({"k": [1, 2]}), Duration::from_secs(30)))
            .await
            .expect("runs");
        assert_eq!(out.result["operation"], "test_op");
        assert_eq!(out.result["parameters"], json!({"k": [1, 2]}));
        assert_eq!(out.result["budget"], 100.0);
        assert_eq!(out.result["timeout_seconds"], 30.0);
        assert_eq!(out.quality, 0.25);
    }

    #[tokio::test]
    async fn a_slow_program_is_killed_at_its_timeout() {
        let started = Instant::now();
        let out = run(&op(&["sleep", "10"]), input(json!({}), Duration::from_millis(500))).await;
        assert!(
            matches!(out, Err(OperationError::TimedOut { after }) if after == Duration::from_millis(500)),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_memory_limit_stops_a_greedy_program() {
        let greedy = op(&[
            "python3",
            "-c",
            "import sys; sys.stdin.read(); b = bytearray(2 * 1024**3); print('{\"result\": {}, \"quality\": 1}')",
        ]);
        let out = run(
            &greedy,
            OperationInput {
                memory_mb: 256,
                ..input(json!({}), Duration::from_secs(30))
            },
        )
        .await;
        match out {
            Err(OperationError::ResourceLimit(why)) => assert!(why.contains("256 MiB"), "{why}"),
            other => panic!("expected ResourceLimit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_program_cannot_open_more_than_its_files() {
        let opener = op(&[
            "python3",
            "-c",
            &format!(
                "import sys; sys.stdin.read(); f = [open('/dev/null') for _ in range({})]; print('{{\"result\": {{}}, \"quality\": 1}}')",
                EXTERNAL_OPEN_FILES_MAX + 10
            ),
        ]);
        match run(&opener, input(json!({}), Duration::from_secs(30))).await {
            Err(OperationError::Failed(why)) => assert!(why.contains("Too many open files"), "{why}"),
            other => panic!("expected a failure to open files, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_program_cannot_write_a_file_beyond_its_limit() {
        let dir = writable_tempdir();
        let path = dir.path().join("big");
        let writer = op(&[
            "python3",
            "-c",
            &format!(
                "import sys; sys.stdin.read()\nwith open({:?}, 'wb', buffering=0) as f:\n    for _ in range({}): f.write(b'x' * 1048576)\nprint('{{\"result\": {{}}, \"quality\": 1}}')",
                path.display().to_string(),
                EXTERNAL_FILE_BYTES_MAX / 1048576 + 2
            ),
        ]);
        match run(&writer, input(json!({}), Duration::from_secs(30))).await {
            Err(OperationError::Failed(why)) => assert!(why.contains("File too large"), "{why}"),
            other => panic!("expected a failure to write, got {other:?}"),
        }
        let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(written <= EXTERNAL_FILE_BYTES_MAX, "{written} bytes written");
    }

    #[tokio::test]
    async fn a_program_stops_at_the_cpu_seconds_its_budget_buys() {
        let burn = op(&[
            "python3",
            "-c",
            "import sys, time; sys.stdin.read(); end = time.process_time() + 8\nwhile time.process_time() < end: pass\nprint('{\"result\": {}, \"quality\": 1}')",
        ]);
        // 1 ATP at 1 ATP per CPU second buys 1 s (+1 s grace): far below the 8 s it burns.
        let out = run(
            &burn,
            OperationInput {
                budget: Atp::from_micros(MICROS_PER_ATP),
                ..input(json!({}), Duration::from_secs(60))
            },
        )
        .await;
        match out {
            Err(OperationError::ResourceLimit(why)) => assert!(why.contains("CPU"), "{why}"),
            other => panic!("expected the CPU limit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_replies_fail_saying_what_was_wrong() {
        let cases = [
            ("not json", "did not print a JSON reply"),
            (r#"{"result": {}, "quality": 1.5}"#, "quality 1.5"),
            (r#"{"result": {}, "quality": -0.1}"#, "quality -0.1"),
            (r#"{"result": 3, "quality": 0.5}"#, "JSON reply"),
            (r#"{"result": {}}"#, "missing field `quality`"),
            (
                r#"{"result": {}, "quality": 0.5, "qualty": 1}"#,
                "unknown field `qualty`",
            ),
            (r#"{"result": {}, "quality": 0.5, "atp_consumed": -1}"#, "atp_consumed"),
        ];
        for (reply, expected) in cases {
            match run(&replying(reply), input(json!({}), Duration::from_secs(30))).await {
                Err(OperationError::Failed(why)) => assert!(why.contains(expected), "{reply}: {why}"),
                other => panic!("{reply}: expected Failed, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failing_program_reports_its_status_and_stderr() {
        let failing = op(&["sh", "-c", "cat >/dev/null; echo 'model file missing' >&2; exit 3"]);
        match run(&failing, input(json!({}), Duration::from_secs(30))).await {
            Err(OperationError::Failed(why)) => {
                assert!(
                    why.contains("exit status: 3") && why.contains("model file missing"),
                    "{why}"
                )
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let missing = op(&["./no/such/program"]);
        match run(&missing, input(json!({}), Duration::from_secs(30))).await {
            Err(OperationError::Failed(why)) => assert!(
                why.contains("cannot start") && why.contains("operations.test_op.command"),
                "{why}"
            ),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn endless_output_is_cut_off() {
        let started = Instant::now();
        let out = run(&op(&["yes"]), input(json!({}), Duration::from_secs(30))).await;
        assert!(
            matches!(out, Err(OperationError::ResourceLimit(ref why)) if why.contains("stdout")),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_program_and_its_children() {
        let dir = writable_tempdir();
        let pids = dir.path().join("pids");
        let script = format!("sleep 60 & echo $$ $! > {}.tmp; mv {0}.tmp {0}; wait", pids.display());
        let sleeper = op(&["sh", "-c", &script]);
        let mut run = sleeper.run(input(json!({}), Duration::from_secs(60)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pids.exists() {
            assert!(Instant::now() < deadline, "the program never started");
            // Drive the run a little so that it spawns and feeds the program.
            let _ = tokio::time::timeout(Duration::from_millis(20), &mut run).await;
        }
        let text = std::fs::read_to_string(&pids).expect("pids");
        let pids: Vec<u32> = text.split_whitespace().map(|p| p.parse().expect("a pid")).collect();
        assert_eq!(pids.len(), 2, "{text}");
        assert!(pids.iter().all(|&p| alive(p)), "both run before the drop");
        drop(run);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| alive(p)) {
            assert!(Instant::now() < deadline, "{pids:?} outlived the dropped run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_descendant_that_left_the_session_is_killed_at_the_timeout() {
        let dir = writable_tempdir();
        let pid_file = dir.path().join("pid");
        // A subshell starts `sleep` in a session of its own (out of reach of the process-group
        // kill), writes its pid and exits, so that the sleeper is an orphan as well.
        let script = format!(
            "cat >/dev/null; (setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {0}.tmp; mv {0}.tmp {0}); sleep 60",
            pid_file.display()
        );
        let out = run(&op(&["sh", "-c", &script]), input(json!({}), Duration::from_secs(3))).await;
        assert!(matches!(out, Err(OperationError::TimedOut { .. })), "{out:?}");
        let text = std::fs::read_to_string(&pid_file).expect("the program wrote the sleeper's pid");
        let pid: u32 = text.trim().parse().expect("a pid");
        let session = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "the sleeper {pid} outlived the timeout: {session}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_descendant_that_left_the_session_dies_when_the_program_exits() {
        let dir = writable_tempdir();
        let pid_file = dir.path().join("pid");
        let late = dir.path().join("late");
        // A child in a session of its own (out of reach of the process-group kill) that would
        // write a file 3 s later; the program answers and exits 0 at once.
        let script = format!(
            "cat >/dev/null; setsid sh -c 'sleep 3; echo late > {late}' </dev/null >/dev/null 2>&1 & echo $! > {0}.tmp; mv {0}.tmp {0}; printf '%s' '{{\"result\": {{}}, \"quality\": 1}}'",
            pid_file.display(),
            late = late.display()
        );
        run(&op(&["sh", "-c", &script]), input(json!({}), Duration::from_secs(30)))
            .await
            .expect("runs");
        let ended = Instant::now();
        let text = std::fs::read_to_string(&pid_file).expect("the program wrote the child's pid");
        let pid: u32 = text.trim().parse().expect("a pid");
        // Gone from /proc: neither running nor a zombie left unreaped.
        let deadline = ended + Duration::from_secs(2);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "the child {pid} outlived the run that started it"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Past the time it would have slept: it never wrote.
        tokio::time::sleep_until((ended + Duration::from_secs(4)).into()).await;
        assert!(!late.exists(), "the child wrote after its run ended");
    }

    #[tokio::test]
    async fn a_run_that_ends_leaves_the_descendants_of_other_runs_alone() {
        let dir = writable_tempdir();
        let (pid_file, go) = (dir.path().join("pid"), dir.path().join("go"));
        // Run B keeps a sleeper in a session of its own while it waits for `go`.
        let waiting = format!(
            "cat >/dev/null; setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {0}.tmp; mv {0}.tmp {0}; while [ ! -e {go} ]; do sleep 0.05; done; printf '%s' '{{\"result\": {{}}, \"quality\": 1}}'",
            pid_file.display(),
            go = go.display()
        );
        let b = tokio::spawn(op(&["sh", "-c", &waiting]).run(input(json!({}), Duration::from_secs(30))));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "run B never started its sleeper");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        // Run A starts and leaves an orphan of its own, and ends.
        let leaving = "cat >/dev/null; setsid sleep 60 </dev/null >/dev/null 2>&1 & printf '%s' '{\"result\": {}, \"quality\": 1}'";
        run(&op(&["sh", "-c", leaving]), input(json!({}), Duration::from_secs(30)))
            .await
            .expect("run A");
        assert!(alive(pid), "run A's end killed run B's sleeper {pid}");
        std::fs::write(&go, b"").expect("go");
        b.await.expect("joined").expect("run B");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "run B's sleeper {pid} outlived run B");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_program_cannot_read_the_platform_key() {
        use std::os::unix::fs::PermissionsExt;
        // The key sits in a directory anyone may enter: only its owner and mode protect it.
        let dir = writable_tempdir();
        let key_path = dir.path().join("platform_ed25519.key");
        let key = crate::identity::keys::generate().expect("a key");
        crate::identity::keys::write_secret(&key_path, &key, false).expect("key written");
        assert!(
            std::fs::read(&key_path).is_ok_and(|k| !k.is_empty()),
            "the worker reads its key"
        );
        let mode = std::fs::metadata(&key_path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reader = op(&[
            "sh",
            "-c",
            &format!(
                "cat >/dev/null; id -u >&2; id -G >&2; cat {} >&2 && echo READ >&2; exit 3",
                key_path.display()
            ),
        ]);
        let why = match run(&reader, input(json!({}), Duration::from_secs(30))).await {
            Err(OperationError::Failed(why)) => why,
            other => panic!("expected the program's failure, got {other:?}"),
        };
        if user::worker_is_root() {
            let nobody = user::lookup("nobody", "test_op").expect("nobody");
            assert!(why.contains("Permission denied") && !why.contains("READ"), "{why}");
            // stderr: `id -u`, then `id -G`, then cat's complaint.
            let stderr = why.split_once("exit status: 3: ").map(|(_, e)| e).unwrap_or_default();
            let mut lines = stderr.lines();
            assert_eq!(lines.next(), Some(nobody.uid.to_string().as_str()), "{why}");
            assert_eq!(lines.next(), Some(nobody.gid.to_string().as_str()), "groups: {why}");
        } else {
            // The documented limit: not root, the program runs as the worker and reads the key.
            assert!(why.contains("READ"), "{why}");
        }
    }

    #[tokio::test]
    async fn the_environment_holds_only_path_and_home() {
        let dir = writable_tempdir();
        let file = dir.path().join("env");
        let script = format!(
            "cat >/dev/null; /usr/bin/env > {}; printf '%s' '{{\"result\": {{}}, \"quality\": 1}}'",
            file.display()
        );
        run(&op(&["sh", "-c", &script]), input(json!({}), Duration::from_secs(30)))
            .await
            .expect("runs");
        let env = std::fs::read_to_string(&file).expect("env file");
        let seen: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        assert!(seen.contains(&"PATH"), "{seen:?}");
        // The shell itself maintains these.
        let shell = ["PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"];
        let parent: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| !shell.contains(&k.as_str()))
            .collect();
        assert!(!parent.is_empty(), "the test needs variables that could leak");
        let leaked: Vec<&String> = parent.iter().filter(|k| seen.contains(&k.as_str())).collect();
        assert!(leaked.is_empty(), "{leaked:?} leaked into the program's environment");
    }

    #[tokio::test]
    async fn cpu_time_is_charged_capped_and_lowered_by_a_self_report() {
        let burn = "import sys, time; sys.stdin.read(); end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\nprint('{\"result\": {}, \"quality\": 1%s}' % (sys.argv[1] if len(sys.argv) > 1 else ''))";
        let out = run(&op(&["python3", "-c", burn]), input(json!({}), Duration::from_secs(30)))
            .await
            .expect("runs");
        // 0.3 s of CPU at 1 ATP per second, plus interpreter start-up.
        assert!(out.atp_consumed >= Atp::from_micros(250_000), "{}", out.atp_consumed);
        assert!(
            out.atp_consumed <= Atp::from_micros(5 * MICROS_PER_ATP),
            "{}",
            out.atp_consumed
        );

        let small = OperationInput {
            budget: Atp::from_micros(1_000),
            ..input(json!({}), Duration::from_secs(30))
        };
        let out = run(&op(&["python3", "-c", burn]), small).await.expect("runs");
        assert_eq!(out.atp_consumed, Atp::from_micros(1_000));

        let modest = op(&["python3", "-c", burn, ", \"atp_consumed\": 0.01"]);
        let out = run(&modest, input(json!({}), Duration::from_secs(30)))
            .await
            .expect("runs");
        assert_eq!(out.atp_consumed, Atp::from_micros(10_000));
        let greedy = op(&["python3", "-c", burn, ", \"atp_consumed\": 50"]);
        let out = run(&greedy, input(json!({}), Duration::from_secs(30)))
            .await
            .expect("runs");
        assert!(
            out.atp_consumed < Atp::from_micros(5 * MICROS_PER_ATP),
            "{}",
            out.atp_consumed
        );
    }
}
