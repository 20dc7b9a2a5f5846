use std::process::ExitCode;

use clap::Parser;
use colored::Colorize;

fn main() -> ExitCode {
    let cli = vivachat::cli::Cli::parse();
    match vivachat::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{} {error:#}", "Error:".red().bold());
            ExitCode::FAILURE
        }
    }
}
