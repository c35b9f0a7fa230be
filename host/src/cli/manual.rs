//! `plugboard man`: the manual pages, made from the CLI's own definition
//! (clap_mangen), so that they say what the binary does: plugboard(1), and
//! one page per command in git's style (plugboard-serve(1), ...), which
//! plugboard(1) lists.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes plugboard(1), the page of `cli` itself.
pub fn write_page(cli: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(cli)
        .render(out)
        .context("cannot write the manual page")
}

/// Writes plugboard(1) and a page per visible command into `dir`.
pub fn write_pages(cli: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = cli.get_name().to_owned();
    for command in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let page = format!("{name}-{}", command.get_name());
        let command = command
            .clone()
            .name(page.clone())
            .bin_name(format!("{name} {}", command.get_name()));
        write_file(&dir.join(format!("{page}.1")), command)?;
    }
    write_file(&dir.join(format!("{name}.1")), cli)
}

fn write_file(path: &Path, command: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    write_page(command, &mut page)?;
    std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
}
