//! `memvisor hugepages`: what users otherwise do by hand to the host's huge pages.

use clap::Subcommand;
use hugepages::HugePageSize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum HugepagesCmd {
    /// Show each pool (total, free, reserved, surplus), hugetlbfs mounts and the THP mode.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grow a pool by COUNT pages (writes nr_hugepages; fails if the kernel gives fewer).
    Reserve {
        /// Pages to add to the pool.
        count: u64,
        /// Page size: 2M or 1G.
        #[arg(long, default_value = "2M")]
        size: HugePageSize,
    },
    /// Set a pool to exactly COUNT pages (0 gives every free page back).
    Set {
        /// Pages in the pool.
        count: u64,
        /// Page size: 2M or 1G.
        #[arg(long, default_value = "2M")]
        size: HugePageSize,
    },
    /// Mount hugetlbfs at DIR (created if missing) for use as a --memory mem-path.
    Mount {
        /// Mount point, e.g. /dev/hugepages.
        dir: PathBuf,
        /// Page size: 2M or 1G.
        #[arg(long, default_value = "2M")]
        size: HugePageSize,
    },
}

pub fn run(cmd: HugepagesCmd) -> Result<ExitCode, String> {
    let e = |e: hugepages::HugePageError| e.to_string();
    match cmd {
        HugepagesCmd::Status { json } => {
            if json {
                let s = hugepages::host_status().map_err(e)?;
                println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
            } else {
                print!("{}", hugepages::status_text().map_err(e)?);
            }
        }
        HugepagesCmd::Reserve { count, size } => {
            let before = hugepages::pool_status(size).map_err(e)?;
            let change = hugepages::set_pool_size(size, before.total + count).map_err(e)?;
            println!("{change}");
            println!("{}", hugepages::pool_status(size).map_err(e)?);
        }
        HugepagesCmd::Set { count, size } => {
            let change = hugepages::set_pool_size(size, count).map_err(e)?;
            println!("{change}");
            println!("{}", hugepages::pool_status(size).map_err(e)?);
        }
        HugepagesCmd::Mount { dir, size } => {
            let (m, changed) = hugepages::mount(&dir, size).map_err(e)?;
            if changed {
                println!(
                    "mounted hugetlbfs ({}) at {}",
                    m.page_size,
                    m.path.display()
                );
            } else {
                println!(
                    "{} is already a hugetlbfs mount of {} pages; nothing changed",
                    m.path.display(),
                    m.page_size
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
