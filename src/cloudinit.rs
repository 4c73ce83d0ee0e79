//! `sapari-agent cloud-init render`: user-data that installs and converges a new server.

use crate::cli::RenderArgs;
use crate::exit;

pub fn render(_a: &RenderArgs) -> i32 {
    eprintln!("sapari-agent: cloud-init render is not implemented yet");
    exit::USAGE
}
