//! Compiling components, away from the process that serves clients.
//!
//! Cranelift compiling an embedded interpreter takes seconds of every core
//! and hundreds of MiB, kept by the allocator afterwards; and whatever it
//! does with a hostile component (time, memory, a crash) would happen to
//! the process that serves every client. So the server compiles a plugin by
//! running itself (`plugboard compile-plugin`, hidden) with the same engine
//! settings: the child writes the compiled code into wasmtime's cache
//! (checksummed, `cache_check.rs`) and exits; the server then loads it from
//! the cache, which is deserializing, not compiling. The child runs under a
//! memory limit and a deadline; one that fails, is killed or crashes costs
//! only that plugin's load, and the previous version keeps serving.
//!
//! The child keeps Cranelift's incremental cache (`incremental.rs`): a
//! component whose bytes changed recompiles only the functions that did.
//!
//! A compile that succeeded leaves a marker (`compiled/`, keyed by the
//! component's bytes and the engine's settings): a restart, or a server
//! after `plugboard compile`, loads the plugin without starting a child.
//!
//! How a load failed is told by where: the compile (the component is not
//! valid, or its compile did not finish) or the load into the serving
//! engine, whose pooling allocator checks what one instance would need (the
//! component is too large for a plugin): see [`LoadError`].
//!
//! Without a cache (`compile_cache = false`, and the in-process tests) the
//! compile runs in this process, on an engine without the pool, then again
//! on the serving engine: twice the work, so that the two failures stay
//! apart.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::Component;

use super::load::LoadError;
use super::runtime::{EngineOptions, WasmRuntime};

/// Where plugins are compiled.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// In this process: the tests, and a server without a compile cache.
    #[default]
    InProcess,
    /// In a child process of this binary, under limits.
    Child(ChildLimits),
}

/// What a compiling child may use.
#[derive(Debug, Clone)]
pub struct ChildLimits {
    /// The `plugboard` binary (this process's own).
    pub program: PathBuf,
    /// Its data (heap) at most: past it, an allocation fails and the child
    /// aborts.
    pub memory_bytes: u64,
    /// How long it may take before it is killed.
    pub timeout: Duration,
}

/// How a component's compiled code was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledBy {
    /// The compile cache had it from an earlier compile.
    Cache,
    /// A child process compiled it (`functions_cached` of its functions came
    /// from the incremental cache, `functions_compiled` were compiled).
    Child {
        functions_cached: u64,
        functions_compiled: u64,
    },
    /// This process compiled it.
    InProcess,
}

impl CompiledBy {
    /// For the log line of a load.
    pub fn describe(self) -> String {
        match self {
            Self::Cache => "from the compile cache".into(),
            Self::Child {
                functions_cached,
                functions_compiled,
            } => format!(
                "compiled in a child process ({functions_compiled} functions compiled, \
                 {functions_cached} from the incremental cache)"
            ),
            Self::InProcess => "compiled in the server's process".into(),
        }
    }
}

/// Markers of compiles that succeeded, inside `cache_dir`.
const MARKERS_DIR: &str = "compiled";

/// The exit status of a child whose program could not be executed, when
/// the spawn cannot tell (glibc's `posix_spawn` under an emulator such as
/// qemu-user, whose vfork is a fork): this binary never exits with it.
const EXEC_FAILED: i32 = 127;

/// The last bytes of a failed child's stderr kept for the log line.
const STDERR_TAIL_BYTES: usize = 2048;

impl WasmRuntime {
    /// The compiled component of `bytes`, and how it was had: see the
    /// module docs. Blocks nothing: compiles run in a child, or on a
    /// blocking thread.
    pub(super) async fn component(
        self: &Arc<Self>,
        bytes: Vec<u8>,
    ) -> Result<(Component, CompiledBy), LoadError> {
        let bytes: Arc<[u8]> = bytes.into();
        match (self.cache_dir(), self.compiler()) {
            (Some(cache_dir), Compiler::Child(limits)) => {
                let checking = self.clone();
                let removed = tokio::task::spawn_blocking(move || checking.verify_cache())
                    .await
                    .unwrap_or(true);
                if removed {
                    // Which plugins those entries were is not known: every
                    // one is compiled again before it is loaded.
                    let _ = std::fs::remove_dir_all(cache_dir.join(MARKERS_DIR));
                }
                let marker = marker_path(cache_dir, &bytes, self.engine());
                let mut by = CompiledBy::Cache;
                if !marker.exists() {
                    by = match compile_in_child(limits, self.options(), &bytes).await {
                        Ok(by) => by,
                        Err(ChildError::Failed(err)) => return Err(err),
                        Err(ChildError::CannotStart(err)) => {
                            tracing::warn!(
                                program = %limits.program.display(),
                                "cannot start a compile process ({err}): compiling in the \
                                 server's own process"
                            );
                            let component = self
                                .load_on_serving_engine(bytes)
                                .await
                                .map_err(LoadError::Compile)?;
                            return Ok((component, CompiledBy::InProcess));
                        }
                    };
                    write_marker(&marker);
                }
                let misses = self.cache_stats().map_or(0, |(_, misses)| misses);
                let component = self
                    .load_on_serving_engine(bytes)
                    .await
                    .map_err(LoadError::TooLarge)?;
                if self.cache_stats().is_some_and(|(_, now)| now > misses) {
                    tracing::warn!(
                        "the compile cache had no entry for a plugin it had compiled (removed \
                         or damaged since): compiled it in the server's process"
                    );
                    by = CompiledBy::InProcess;
                }
                Ok((component, by))
            }
            _ => {
                let compiling = self.clone();
                let checked = bytes.clone();
                tokio::task::spawn_blocking(move || compiling.compile_for_check(&checked))
                    .await
                    .map_err(|join| LoadError::Compile(join.into()))?
                    .map_err(|err| LoadError::Compile(err.into()))?;
                let component = self
                    .load_on_serving_engine(bytes)
                    .await
                    .map_err(LoadError::TooLarge)?;
                Ok((component, CompiledBy::InProcess))
            }
        }
    }

    /// The component on the serving engine: from the cache when a compile
    /// put it there, else compiled here. Off the async workers: it can take
    /// a while.
    async fn load_on_serving_engine(
        self: &Arc<Self>,
        bytes: Arc<[u8]>,
    ) -> anyhow::Result<Component> {
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)
    }
}

/// Why a child did not compile.
enum ChildError {
    /// It could not be started (this binary cannot run itself: an emulator
    /// without binfmt_misc, a binary removed since): spawning failed, or
    /// the child exited with [`EXEC_FAILED`] having said nothing.
    CannotStart(std::io::Error),
    /// It ran, and the compile failed or was stopped.
    Failed(LoadError),
}

/// Runs `plugboard compile-plugin` on `bytes` with the engine settings of
/// `options`, under `limits`.
async fn compile_in_child(
    limits: &ChildLimits,
    options: &EngineOptions,
    bytes: &Arc<[u8]>,
) -> Result<CompiledBy, ChildError> {
    let failed = |why: String| ChildError::Failed(LoadError::Compile(anyhow::anyhow!(why)));
    let mut child = tokio::process::Command::new(&limits.program)
        .arg("compile-plugin")
        .args(child_args(options, limits))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // mimalloc reserves 1 GiB of address space up front, which the
        // child's memory limit (RLIMIT_DATA, address space) would count as
        // used: reserving little at a time keeps the limit about memory.
        .env("MIMALLOC_ARENA_RESERVE", "16m")
        // A load abandoned (a shutdown, a newer version) ends its compile.
        .kill_on_drop(true)
        .spawn()
        .map_err(ChildError::CannotStart)?;
    tracing::info!(pid = child.id(), "compiling plugin in a child process");
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(failed("the compiler process has no pipes".into()));
    };
    let input = bytes.clone();
    let feed = async move {
        // A child that died early closes its end: its exit says why.
        let _ = stdin.write_all(&input).await;
    };
    let mut report = String::new();
    let mut said = Vec::new();
    let run = async {
        let (_, _, _, status) = tokio::join!(
            feed,
            stdout.read_to_string(&mut report),
            stderr.read_to_end(&mut said),
            child.wait()
        );
        status
    };
    let status = match tokio::time::timeout(limits.timeout, run).await {
        Ok(status) => status.map_err(|err| failed(format!("the compiler process: {err}")))?,
        Err(_) => {
            let _ = child.kill().await;
            remove_partial_entries(options);
            return Err(failed(format!(
                "compiling took longer than compile_timeout_ms ({} ms): stopped",
                limits.timeout.as_millis()
            )));
        }
    };
    if status.code() == Some(EXEC_FAILED) && report.is_empty() {
        return Err(ChildError::CannotStart(std::io::Error::other(format!(
            "the program could not be executed ({status}): {}",
            stderr_tail(&said)
        ))));
    }
    if status.success() {
        for line in String::from_utf8_lossy(&said)
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::warn!("compiling: {line}");
        }
        return Ok(parse_report(&report));
    }
    remove_partial_entries(options);
    Err(failed(child_failure(status, &said, limits)))
}

/// The arguments that give the child the engine settings of `options`.
fn child_args(options: &EngineOptions, limits: &ChildLimits) -> Vec<String> {
    let mut args = vec![
        "--max-stack-bytes".into(),
        options.max_wasm_stack_bytes.to_string(),
        "--incremental-cache-bytes".into(),
        options.incremental_cache_bytes.to_string(),
        "--memory-limit-bytes".into(),
        limits.memory_bytes.to_string(),
    ];
    if let Some(dir) = &options.cache_dir {
        args.push("--cache-dir".into());
        args.push(dir.to_string_lossy().into_owned());
    }
    if !options.epoch_interruption {
        args.push("--no-epoch-interruption".into());
    }
    args
}

/// The end of what a child said on stderr, for a log line.
fn stderr_tail(said: &[u8]) -> String {
    let tail = &said[said.len().saturating_sub(STDERR_TAIL_BYTES)..];
    String::from_utf8_lossy(tail).trim().to_owned()
}

/// Why a child did not compile, for the log: its exit status or signal,
/// and the end of what it said.
fn child_failure(status: std::process::ExitStatus, said: &[u8], limits: &ChildLimits) -> String {
    use std::os::unix::process::ExitStatusExt;
    let said = stderr_tail(said);
    let said = said.as_str();
    let how = match status.signal() {
        Some(signal) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map_or_else(|_| format!("signal {signal}"), |signal| signal.to_string());
            format!("the compiler process was killed by {name}")
        }
        None => format!("the compiler process failed ({status})"),
    };
    let out_of_memory = [
        "memory allocation",
        "Cannot allocate memory",
        "failed to spawn thread",
    ]
    .iter()
    .any(|sign| said.contains(sign));
    let how = match out_of_memory {
        true => format!(
            "{how}, out of memory (over compile_memory_mib = {})",
            limits.memory_bytes >> 20
        ),
        false => how,
    };
    match said.lines().last() {
        Some(last) if !last.is_empty() => format!("{how}: {last}"),
        _ => how,
    }
}

/// What a child's report (`cached compiled` on stdout) says.
fn parse_report(report: &str) -> CompiledBy {
    let mut numbers = report.split_whitespace().map(|n| n.parse().unwrap_or(0));
    CompiledBy::Child {
        functions_cached: numbers.next().unwrap_or(0),
        functions_compiled: numbers.next().unwrap_or(0),
    }
}

/// Removes what a child killed mid-write left in wasmtime's cache: its
/// writer would otherwise refuse every later write of that entry.
fn remove_partial_entries(options: &EngineOptions) {
    let Some(dir) = &options.cache_dir else {
        return;
    };
    let modules = super::cache_check::wasmtime_dir(dir).join("modules");
    let compilers = std::fs::read_dir(modules).into_iter().flatten().flatten();
    for file in compilers
        .filter_map(|compiler| std::fs::read_dir(compiler.path()).ok())
        .flat_map(|files| files.flatten())
    {
        if file.file_name().to_string_lossy().contains(".wip-") {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// Where the marker of a compile of `bytes` with `engine`'s settings goes.
fn marker_path(cache_dir: &Path, bytes: &[u8], engine: &wasmtime::Engine) -> PathBuf {
    let mut settings = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut hasher = Sha256::new();
    hasher.update(settings.finish().to_le_bytes());
    hasher.update(bytes);
    cache_dir
        .join(MARKERS_DIR)
        .join(format!("{:x}", hasher.finalize()))
}

fn write_marker(marker: &Path) {
    let written = marker
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(marker, b""));
    if let Err(err) = written {
        tracing::debug!(marker = %marker.display(), "cannot mark a compile done: {err}");
    }
}

/// What `plugboard compile-plugin` is given: the engine settings, and where
/// to put what it compiles.
#[derive(Debug)]
pub struct ChildCompile {
    pub options: EngineOptions,
    pub memory_limit_bytes: u64,
}

/// The child's side: reads a component from stdin, compiles it into the
/// cache under a memory limit, prints `cached compiled` (functions from the
/// incremental cache, functions compiled) and returns.
pub fn compile_plugin_from_stdin(job: &ChildCompile) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    limit_own_memory(job.memory_limit_bytes)?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read the component")?;
    let started = Instant::now();
    let (cached, compiled) = super::runtime::compile_into_cache(&job.options, &bytes)?;
    tracing::debug!(ms = started.elapsed().as_millis(), "compiled");
    writeln!(std::io::stdout(), "{cached} {compiled}")?;
    Ok(())
}

/// Caps this process's heap: an allocation past it fails, and the compile
/// aborts, instead of the machine swapping or its OOM killer choosing a
/// victim. No core file: a child killed for its memory writes none.
fn limit_own_memory(bytes: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_DATA, bytes, bytes).context("cannot limit the compile's memory")?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("cannot turn core files off")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(program: &str) -> ChildLimits {
        ChildLimits {
            program: program.into(),
            memory_bytes: 1 << 30,
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_program_that_could_not_be_executed_is_told_from_a_failed_compile() {
        let bytes: Arc<[u8]> = Arc::from(&b"\0asm"[..]);
        let options = EngineOptions::default();
        // `env` runs its first argument, `compile-plugin`, which is no
        // program: it exits 127, as a spawn under qemu-user does.
        let unexecuted = compile_in_child(&limits("/usr/bin/env"), &options, &bytes).await;
        assert!(matches!(unexecuted, Err(ChildError::CannotStart(_))));
        let failed = compile_in_child(&limits("/bin/false"), &options, &bytes).await;
        assert!(matches!(failed, Err(ChildError::Failed(_))));
    }
}
