//! The one binary: the Lambda runtime when Lambda starts it (`AWS_LAMBDA_RUNTIME_API` is set),
//! the command line otherwise. Everything else lives in the library.

// The runtime's future nests the whole invocation (handler → engine → SDK calls); computing
// its layout can pass rustc's default query depth of 128, depending on evaluation order
// (seen on a fresh incremental build, not on a warm one).
#![recursion_limit = "256"]

use std::process::ExitCode;

use copy_snapshots::entry::{cli, lambda};

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var_os(lambda::RUNTIME_API_VARIABLE).is_none() {
        return cli::main().await;
    }
    match lambda::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}
