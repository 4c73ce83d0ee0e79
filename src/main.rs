use clap::Parser;
use clap::error::ErrorKind;

use sapari_agent::{cli::Cli, exit};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
                _ => exit::USAGE,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // One thread is enough: the work is waiting on child processes and the kernel,
    // and it keeps the agent's footprint small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sapari-agent: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    std::process::exit(rt.block_on(sapari_agent::run(cli)));
}
