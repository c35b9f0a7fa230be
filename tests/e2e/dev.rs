//! `plugboard dev`: projects made by `plugboard new` built, served, and
//! rebuilt and reloaded on every edit.

use std::path::Path;
use std::process::Command;

use crate::support::dev::{Dev, new_project, replace_in};
use crate::support::{COMPILE_TIMEOUT, Client};

/// A Rust and a Python project built and served at start (`--build`: the
/// real builds, as a release); an edit to either is rebuilt and served
/// with no other step; a broken edit prints the compiler's complaint and
/// the last good version keeps serving.
#[test]
fn dev_build_rebuilds_and_reloads_projects_on_edit() {
    let projects = tempfile::tempdir().unwrap();
    let rust = new_project(projects.path(), "dev-rust", "rust");
    let python = new_project(projects.path(), "dev-py", "python");
    let dev = Dev::start_with(&[&rust, &python], &["--build"]);
    assert_eq!(dev.request("dev-rust Ada"), "hello, Ada");
    assert_eq!(dev.request("dev-py Ada"), "hello, Ada");

    let rust_source = rust.join("src/lib.rs");
    dev.edit(&rust_source, "\"hello, {who}\"", "\"howdy, {who}\"", 1);
    assert_eq!(dev.request("dev-rust Ada"), "howdy, Ada");
    dev.edit(
        &python.join("app.py"),
        "f\"hello, {who}\"",
        "f\"hiya, {who}\"",
        2,
    );
    assert_eq!(dev.request("dev-py Ada"), "hiya, Ada");

    let text = std::fs::read_to_string(&rust_source).unwrap();
    std::fs::write(&rust_source, text.replace("Ok(format!", "Ok(format!(")).unwrap();
    let failed = dev
        .log
        .wait_for_within("build of dev_rust.wasm failed", COMPILE_TIMEOUT);
    assert!(failed.is_some(), "{}", dev.log.text());
    assert!(
        dev.log.text().contains("src/lib.rs:"),
        "the compiler's output"
    );
    assert_eq!(dev.request("dev-rust Ada"), "howdy, Ada");
}

/// What is not a project is refused, with the reason.
#[test]
fn dev_refuses_a_directory_that_is_not_a_project() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(crate::support::plugboard_path())
        .arg("dev")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no Makefile"), "{stderr}");
}

/// A Python and a JavaScript project served by runners: no build, an edit
/// is loaded as it is saved (the new reply at once, a renamed command in
/// `help`), a source that does not load is reported with its file and line
/// while the last good version answers, and an exception's message is the
/// reply.
#[test]
fn runners_serve_python_and_javascript_edits_without_a_build() {
    let projects = tempfile::tempdir().unwrap();
    let python = new_project(projects.path(), "run-py", "python");
    let js = new_project(projects.path(), "run-js", "js");
    let dev = Dev::start(&[&python, &js]);
    assert_eq!(dev.request("run-py Ada"), "hello, Ada");
    assert_eq!(dev.request("run-js Ada"), "hello, Ada");
    assert!(!python.join("run_py.wasm").exists(), "no build");

    let app = python.join("app.py");
    let plugin = js.join("plugin.js");
    dev.edit_source(&app, "f\"hello, {who}\"", "f\"hiya, {who}\"", "run_py");
    assert_eq!(dev.request("run-py Ada"), "hiya, Ada");
    dev.edit_source(&plugin, "`hello, ${who}`", "`hiya, ${who}`", "run_js");
    assert_eq!(dev.request("run-js Ada"), "hiya, Ada");

    dev.edit_source(
        &app,
        "COMMAND = \"run-py\"",
        "COMMAND = \"greet-py\"",
        "run_py",
    );
    let help = dev.request("help");
    assert!(
        help.contains("greet-py (run_py ") && !help.contains("run-py "),
        "{help}"
    );
    assert_eq!(dev.request("greet-py Ada"), "hiya, Ada");

    let broken = dev.edit_source(&app, "return f\"hiya", "return (f\"hiya", "run_py");
    assert!(
        broken.contains("source rejected") && broken.contains("app.py:"),
        "{broken}"
    );
    assert_eq!(
        dev.request("greet-py Ada"),
        "hiya, Ada",
        "the last good version"
    );
    let broken = dev.edit_source(&plugin, "return `hiya", "return (`hiya", "run_js");
    assert!(broken.contains("source rejected"), "{broken}");
    assert!(dev.log.text().contains("plugin.js:"), "{}", dev.log.text());
    assert_eq!(
        dev.request("run-js Ada"),
        "hiya, Ada",
        "the last good version"
    );

    dev.edit_source(
        &app,
        "return (f\"hiya, {who}\"",
        "return f\"{1 / 0}\" + f\"hiya, {who}\"",
        "run_py",
    );
    let failed = dev.request("greet-py Ada");
    assert!(
        failed.starts_with("error: internal error: app.py:")
            && failed.ends_with("ZeroDivisionError: division by zero"),
        "{failed}"
    );
    dev.edit_source(
        &plugin,
        "return (`hiya, ${who}`",
        "throw new RangeError(`no greeting for ${who}`); return `hiya, ${who}`",
        "run_js",
    );
    assert_eq!(dev.request("run-js Ada"), "error: no greeting for Ada");
}

/// A runner answers as the built plugin does: the shipped Python and
/// JavaScript plugins' sources, served by runners, reply to the same
/// commands with the same text as their componentized builds.
#[test]
fn a_runner_answers_as_the_built_plugin_does() {
    let projects = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stats = new_project(projects.path(), "stats", "python");
    std::fs::copy(
        repo.join("plugins/python/stats/app.py"),
        stats.join("app.py"),
    )
    .unwrap();
    let text = new_project(projects.path(), "text", "js");
    std::fs::copy(
        repo.join("plugins/js/text/plugin.js"),
        text.join("plugin.js"),
    )
    .unwrap();
    let dev = Dev::start(&[&stats, &text]);
    let built = crate::support::Setup::new()
        .guest("stats", "stats")
        .guest("text", "text")
        .start();
    let commands = [
        "stats 1 2 3 4",
        "stats 2.5 -1 1e3",
        "stats",
        "stats one",
        "upper hello",
        "upper héllo wörld",
        "json-get a {\"a\": {\"b\": [1, 2]}}",
        "json-get missing {}",
        "json-get a not json",
        "json-get",
    ];
    let mut runner = Client::connect(dev.addr);
    let mut component = built.connect();
    for command in commands {
        assert_eq!(
            runner.request(command),
            component.request(command),
            "{command}"
        );
    }
    // Pipelined, so that they are served as batches (one buffer each).
    let expected: Vec<String> = commands.iter().map(|c| component.request(c)).collect();
    let pipelined: String = commands.iter().map(|c| format!("{c}<EOF>")).collect();
    for client in [&mut runner, &mut component] {
        client.send(pipelined.as_bytes());
        let replies: Vec<String> = commands.iter().map(|_| client.reply().unwrap()).collect();
        assert_eq!(replies, expected);
    }
}

/// A project's third-party packages (Python's requirements.txt, the
/// `dependencies` of package.json) are built into a runner of its own,
/// once; an edit after that is loaded from the source, with no build.
#[test]
fn runners_bundle_a_projects_dependencies() {
    let projects = tempfile::tempdir().unwrap();
    let python = new_project(projects.path(), "deps-py", "python");
    std::fs::write(python.join("requirements.txt"), "tabulate==0.9.0\n").unwrap();
    replace_in(
        &python.join("app.py"),
        "return f\"hello, {who}\"",
        "import tabulate\n        return tabulate.tabulate([[who, len(who)]], tablefmt=\"plain\")",
    );
    let js = new_project(projects.path(), "deps-js", "js");
    replace_in(
        &js.join("package.json"),
        "\"devDependencies\"",
        "\"dependencies\": { \"ms\": \"2.1.3\" },\n  \"devDependencies\"",
    );
    replace_in(
        &js.join("plugin.js"),
        "const COMMAND",
        "import ms from 'ms';\n\nconst COMMAND",
    );
    replace_in(
        &js.join("plugin.js"),
        "return `hello, ${who}`",
        "return `${ms(who)}`",
    );
    let dev = Dev::start(&[&python, &js]);
    assert_eq!(dev.request("deps-py Ada"), "Ada  3");
    assert_eq!(dev.request("deps-js 2h"), "7200000");
    let runners_built = dev.log.count("building the");
    dev.edit_source(
        &js.join("plugin.js"),
        "return `${ms(who)}`",
        "return `${ms(who) / 1000} s`",
        "deps_js",
    );
    assert_eq!(dev.request("deps-js 2h"), "7200 s");
    assert_eq!(
        dev.log.count("building the"),
        runners_built,
        "no build for an edit"
    );
}

/// Under the Python runner, the standard library is there as in the build:
/// an edit that imports a module the runner does not hold (`colorsys`)
/// gets a runner that holds it (built once, then cached), and the edit
/// after it keeps that runner.
#[test]
fn an_edit_importing_another_stdlib_module_gets_a_runner_with_it() {
    let projects = tempfile::tempdir().unwrap();
    let python = new_project(projects.path(), "stdlib-py", "python");
    let app = python.join("app.py");
    let dev = Dev::start(&[&python]);
    assert_eq!(dev.request("stdlib-py Ada"), "hello, Ada");
    let loads = || dev.log.count("loaded plugin plugin=\"stdlib_py\"");
    let loaded_before = loads();
    dev.edit_source(
        &app,
        "return f\"hello, {who}\"",
        "import colorsys\n        return str(colorsys.rgb_to_hls(1.0, 0.0, 0.0))",
        "stdlib_py",
    );
    // The new runner loads (with the newest source) after the rebuild; the
    // source may reach the server before or after it.
    let loaded = dev.log.wait_for_count_within(
        "loaded plugin plugin=\"stdlib_py\"",
        loaded_before + 1,
        COMPILE_TIMEOUT,
    );
    assert!(loaded, "the new runner never loaded:\n{}", dev.log.text());
    let sources = dev.log.count("from its source");
    if dev.request("stdlib-py Ada") != "(0.0, 0.5, 1.0)" {
        let renewed =
            dev.log
                .wait_for_count_within("from its source", sources + 1, COMPILE_TIMEOUT);
        assert!(renewed, "{}", dev.log.text());
    }
    assert_eq!(dev.request("stdlib-py Ada"), "(0.0, 0.5, 1.0)");
    let new_runner = "imported modules changed: serving it with a runner";
    assert_eq!(dev.log.count(new_runner), 1);
    dev.edit_source(&app, "str(colorsys", "\"hls \" + str(colorsys", "stdlib_py");
    assert_eq!(dev.request("stdlib-py Ada"), "hls (0.0, 0.5, 1.0)");
    assert_eq!(
        dev.log.count(new_runner),
        1,
        "no new runner for an edit that imports nothing new"
    );
}
