//! CDI `createRuntime` hook: attaches a claim's interfaces into the container's pod netns.
//! Exit 0 on success; on failure one clear line on stderr and exit status 1.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "drakit-oci-hook",
    about = "drakit createRuntime hook (attach mode hook)"
)]
struct Args {
    /// UID of the claim whose interfaces to attach.
    #[arg(long, env = "DRAKIT_CLAIM_UID")]
    claim_uid: String,
    /// drakit-netdev's NetdevAttach socket.
    #[arg(
        long,
        env = "DRAKIT_NETDEV_SOCKET",
        default_value = "/run/drakit/netdev.sock"
    )]
    socket: PathBuf,
    /// Deadline for the whole call.
    #[arg(long, env = "DRAKIT_HOOK_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drakit-oci-hook: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = drakit_netdev::hook::read_state(std::io::stdin().lock()).and_then(|state| {
        rt.block_on(drakit_netdev::hook::run(
            &args.claim_uid,
            &args.socket,
            state,
            Duration::from_millis(args.timeout_ms),
        ))
    });
    match res {
        Ok(r) => {
            for i in r.interfaces {
                if let Some(n) = i.network_data {
                    println!(
                        "{} {} {}",
                        n.interface_name,
                        n.hardware_address,
                        n.ips.join(",")
                    );
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
