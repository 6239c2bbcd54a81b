//! Progress on stderr for a person at a terminal (indicatif): nothing with
//! `--json` or when stderr is a pipe or a file, so scripts and logs never see
//! it.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is drawn: text output to a terminal.
fn shown(json: bool) -> bool {
    !json && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A bar of `len` steps drawn with `template` (indicatif's syntax), ticking
/// on its own so a long step still shows the time passing; `None` when
/// nothing is to be drawn. `len` 0 makes a spinner (no known total).
pub(crate) fn bar(json: bool, len: u64, template: &str) -> Option<ProgressBar> {
    if !shown(json) {
        return None;
    }
    let bar = if len == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}
