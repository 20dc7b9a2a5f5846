use std::process::ExitCode;

use clap::Parser;
use colored::Colorize;

/// `vivachat bench | head`: when whoever reads our output stops, we stop, quietly
/// and successfully (as ripgrep does), instead of a panic about a broken pipe.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = vivachat::cli::Cli::parse();
    match vivachat::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{} {error:#}", "Error:".red().bold());
            ExitCode::FAILURE
        }
    }
}
