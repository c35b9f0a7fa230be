//! The `plugboard` command line: `serve` runs the server, `send` talks to one.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use plugboard::cli::client::{ClientTls, Target};
use plugboard::config::{Config, LogFormat};
use plugboard::net::server::ServeOptions;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: with glibc's, memory freed by
/// closed connections and dropped plugin instances stayed resident as heap
/// fragments (10 000 idle clients: 168 MiB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A TCP command server whose every command is a sandboxed WebAssembly plugin.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How long the runtime's last tasks get once `run` has returned.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(100);

/// The path `serve` reads when `--config` is not given.
const DEFAULT_CONFIG: &str = "config.toml";

#[derive(Subcommand)]
enum Command {
    /// Load the plugins and serve commands until SIGINT or SIGTERM.
    Serve {
        /// Config file [default: config.toml, or built-in defaults if it does not exist]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Do not watch the plugin directory (SIGHUP still rescans it).
        #[arg(long)]
        no_watch: bool,
        /// Bench-only: answer routed commands with a native function.
        #[cfg(feature = "native-baseline")]
        #[arg(long, hide = true)]
        native_baseline: bool,
    },
    /// Send commands to a running server and print each reply on its own line.
    ///
    /// With no COMMAND, reads commands from stdin: one per line from a pipe,
    /// or at a prompt on a terminal. Exits non-zero if any reply is an error.
    Send {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:1100")]
        addr: String,
        /// Authenticate with this token first (`plugboard token` makes one).
        #[arg(long, env = "PLUGBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Connect with TLS; the server's certificate must verify and name
        /// the --addr host.
        #[arg(long)]
        tls: bool,
        /// CA certificates (PEM) to verify the server with, instead of the
        /// system's [implies --tls]
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Client certificate chain (PEM), for a server that requires one
        /// [implies --tls]
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's private key (PEM)
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// One command to send, made of these words (like redis-cli:
        /// `send echo hello world` sends `echo hello world`).
        #[arg(conflicts_with = "commands")]
        words: Vec<String>,
        /// A whole command to send; repeat for several, sent in order on one
        /// connection.
        #[arg(long = "command", short = 'c', value_name = "CMD")]
        commands: Vec<String>,
    },
    /// Make a new random auth token; print it, then the config lines that
    /// grant it (only its hash goes in the config).
    Token {
        /// Who will hold it: the name the server's log and metrics use.
        #[arg(long, default_value = "client")]
        name: String,
        /// A command it may run; repeat, or separate with commas
        /// [default: every command]
        #[arg(long = "command", short = 'c', value_delimiter = ',')]
        commands: Vec<String>,
    },
    /// Serve plugin projects, and reload each one whenever its sources
    /// change: Rust projects rebuilt, Python and JavaScript ones served by
    /// a runner that loads their source (no build per edit).
    Dev {
        /// Plugin project directories (made by `plugboard new`).
        #[arg(default_value = ".")]
        projects: Vec<PathBuf>,
        /// Config for limits and grants (its plugin_dir is replaced) [default: built-in defaults, state in memory]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to serve on [default: the config's, 127.0.0.1:1100]
        #[arg(long)]
        listen: Option<String>,
        /// Serve every project's real build (`make build`), rebuilt on each
        /// edit, as a release would be: no runner for Python and JavaScript.
        #[arg(long)]
        build: bool,
    },
    /// Compile every plugin of the config's plugin directory into the
    /// compile cache, and exit: a server started next serves at once.
    Compile {
        /// Config file [default: config.toml, or built-in defaults if it does not exist]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Internal: compile one component, read from stdin, into the compile
    /// cache. The server runs this to compile outside its own process.
    #[command(hide = true)]
    CompilePlugin {
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long)]
        max_stack_bytes: usize,
        #[arg(long)]
        incremental_cache_bytes: u64,
        #[arg(long)]
        memory_limit_bytes: u64,
        #[arg(long)]
        no_epoch_interruption: bool,
    },
    /// Create a plugin project that builds and loads as is, answering a
    /// command named after it.
    New {
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum, default_value = "rust")]
        lang: plugboard::cli::scaffold::Lang,
        /// Directory to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Load a plugin file exactly as the server would, and list its commands
    /// and the imports it needs. Exits non-zero if the server would reject it.
    Check {
        /// The plugin (`.wasm` component).
        file: PathBuf,
        /// Config whose limits and grants apply [default: built-in defaults, compile cache in $XDG_CACHE_HOME/plugboard or ~/.cache/plugboard]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL: `plugboard completions
    /// bash > ~/.local/share/bash-completion/completions/plugboard`
    /// (`make install` installs bash's, zsh's and fish's).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, in roff: `plugboard man | man -l -`; with
    /// `--dir`, write plugboard(1) and a page per command (plugboard-serve(1),
    /// ...) there, as `make install` does.
    Man {
        /// Write every page into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run one command in a plugin without a server, under the same limits,
    /// and print the reply. State lives in memory for this run only.
    Call {
        /// The plugin (`.wasm` component).
        file: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
        /// Config whose limits and plugin settings apply [default: built-in defaults, compile cache in $XDG_CACHE_HOME/plugboard or ~/.cache/plugboard]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Errors are printed as one line with their causes (`error: cannot connect
/// to ...: Connection refused`), never as a backtrace: this is a CLI, and the
/// reader is its user.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // A compile child needs no runtime, and its memory limit is its own.
    if let Command::CompilePlugin { .. } = cli.command {
        return compile_plugin(cli.command);
    }
    // Dropped last, after the runtime: it flushes the log's last lines.
    let mut log = None;
    // `serve` and `dev` log as their config says, once they have read it.
    if !matches!(cli.command, Command::Serve { .. } | Command::Dev { .. }) {
        log = Some(init_logging(LogFormat::Text));
    }
    // Blocking threads (plugin compiles, file reads, name lookups, WASI file
    // operations) end after a second idle rather than tokio's 10: memory
    // freed into an idle thread's heap goes back to the system only when
    // the thread ends. Started with the four shipped plugins (warm compile
    // cache), the server stayed at 316 MB resident; now 157 MB a second
    // after it is ready.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => return fail(err.into()),
    };
    let code = runtime.block_on(run(cli, &mut log)).unwrap_or_else(fail);
    // Not a plain drop, which waits for every blocking task: a plugin
    // compile in progress would hold the exit for seconds past
    // `shutdown_timeout_ms`. What is abandoned is only ever unacknowledged.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    drop(log);
    code
}

/// `plugboard compile-plugin`: the child side of a compile (see
/// `plugin/compile.rs`). Errors go to stderr, where the server reads them.
fn compile_plugin(command: Command) -> ExitCode {
    let Command::CompilePlugin {
        cache_dir,
        max_stack_bytes,
        incremental_cache_bytes,
        memory_limit_bytes,
        no_epoch_interruption,
    } = command
    else {
        return ExitCode::FAILURE;
    };
    let job = plugboard::plugin::ChildCompile {
        options: plugboard::plugin::EngineOptions {
            max_wasm_stack_bytes: max_stack_bytes,
            epoch_interruption: !no_epoch_interruption,
            cache_dir: Some(cache_dir),
            incremental_cache_bytes,
            ..plugboard::plugin::EngineOptions::default()
        },
        memory_limit_bytes,
    };
    match plugboard::plugin::compile_plugin_from_stdin(&job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

/// How long an idle blocking thread lives (see `main`).
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

fn fail(err: anyhow::Error) -> ExitCode {
    // `plugboard check x.wasm | head`: the reader left, nothing to report.
    let reader_left = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if !reader_left {
        eprintln!("error: {err:#}");
    }
    ExitCode::FAILURE
}

/// `log` receives the log writer's guard when `serve` starts logging.
async fn run(cli: Cli, log: &mut Option<LogGuard>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            no_watch,
            #[cfg(feature = "native-baseline")]
            native_baseline,
        } => {
            #[cfg(feature = "native-baseline")]
            if native_baseline {
                plugboard::router::native_baseline::enable();
            }
            let (config, config_path) = load_config(config)?;
            *log = Some(init_logging(config.log_format));
            if config_path.is_none() {
                tracing::info!("no {DEFAULT_CONFIG} here: using built-in defaults");
            }
            let shutdown = shutdown_signal()?;
            let options = ServeOptions {
                config,
                config_path,
                watch: !no_watch,
                control: None,
            };
            plugboard::net::server::run(options, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            addr,
            token,
            tls,
            ca,
            cert,
            key,
            words,
            commands,
        } => {
            // No words and no -c: commands come from stdin (a pipe or a prompt).
            let commands = if words.is_empty() {
                commands
            } else {
                vec![words.join(" ")]
            };
            let identity = cert.as_deref().zip(key.as_deref());
            let tls = (tls || ca.is_some() || identity.is_some())
                .then(|| ClientTls::new(ca.as_deref(), identity))
                .transpose()?;
            let target = Target { addr, token, tls };
            plugboard::cli::client::send(&target, commands).await
        }
        Command::Dev {
            projects,
            config,
            listen,
            build,
        } => {
            let base = tool_config(config)?;
            *log = Some(init_logging(base.log_format));
            let options = plugboard::cli::dev::DevOptions {
                projects,
                listen,
                build,
            };
            plugboard::cli::dev::run(options, base, shutdown_signal()?).await
        }
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "plugboard", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let cli = <Cli as clap::CommandFactory>::command();
            match dir {
                None => plugboard::cli::manual::write_page(cli, &mut std::io::stdout())?,
                Some(dir) => plugboard::cli::manual::write_pages(cli, &dir)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { name, commands } => {
            print!("{}", plugboard::cli::token::new_entry(&name, &commands)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::New { name, lang, dir } => {
            let root = plugboard::cli::scaffold::new_plugin(&name, &dir, lang)?;
            // This binary need not be on PATH: say where it is.
            let me = std::env::current_exe().context("cannot locate this binary")?;
            println!("created {}", root.display());
            println!("build and check it: make -C {} check", root.display());
            println!(
                "serve it, rebuilt on every edit: {} dev {}",
                me.display(),
                root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Compile { config } => {
            let (config, _) = load_config(config)?;
            plugboard::cli::compile::run(&config).await
        }
        // Handled before the runtime starts (see `main`).
        Command::CompilePlugin { .. } => Ok(ExitCode::FAILURE),
        Command::Check { file, config } => {
            plugboard::cli::standalone::check(&file, &tool_config(config)?).await
        }
        Command::Call {
            file,
            words,
            config,
        } => plugboard::cli::standalone::call(&file, &words, &tool_config(config)?).await,
    }
}

/// An explicit `--config` must exist; without one, `config.toml` is used if
/// present and the built-in defaults otherwise. Returns the file read, if
/// any: it is what SIGHUP re-reads.
fn load_config(path: Option<PathBuf>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = path.or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    match path {
        Some(path) => Ok((Config::load(&path)?, Some(path))),
        None => Ok((Config::defaults()?, None)),
    }
}

/// `check` and `call` use a config only when given one: their plugin is a
/// file on the command line, not the config's plugin directory. Without
/// one, they compile into the user's cache (`cli::user_config`): a Python
/// plugin's second `call` then takes a fraction of a second instead of 6.
fn tool_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        // `dev`, `check` and `call` serve no plugin directory of the config's.
        Some(path) => Config::load_settings(&path),
        None => Ok(plugboard::cli::user_config()),
    }
}

/// Resolves when SIGINT or SIGTERM arrives. Handlers are installed before the
/// server starts, so a signal during startup is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Keeps the log writer's thread running; dropping it flushes what is left.
type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Lines the log writer may hold before it drops new ones.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Logs go to stderr (stdout is for `send`'s replies), filtered by RUST_LOG.
/// JSON logs are one object per line, with the current span's fields (the
/// connection's peer, the command's plugin and name) in each event.
///
/// Lines are handed to a writer thread: a worker never waits on a slow
/// terminal or pipe. If the writer falls behind by [`LOG_BUFFER_LINES`],
/// new lines are dropped rather than stall the server (plugins' own lines
/// are rate-limited before that: see `plugin/log.rs`).
fn init_logging(format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("plugboard-log")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_span_list(false).init(),
    }
    guard
}
