//! FRR's `bfdd` (Debian's `frr`) as a test peer: started alone (no zebra)
//! in a namespace with a configuration written by the test, reached with
//! `vtysh` over its own socket directory, killed and removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use super::{eventually, must, Netns};

/// Where Debian installs it.
pub const BFDD: &str = "/usr/lib/frr/bfdd";

/// bfdd in a namespace, killed on drop.
pub struct Bfdd {
    child: Option<Child>,
    dir: PathBuf,
    ns: String,
}

impl Bfdd {
    /// Starts it in `ns` with `conf` (a `bfdd.conf`: the `bfd` node and its
    /// peers); `id` names its directory.
    ///
    /// # Panics
    /// When bfdd is not installed or does not start within ten seconds.
    pub fn start(ns: &Netns, id: &str, conf: &str) -> Bfdd {
        assert!(
            std::path::Path::new(BFDD).exists(),
            "{BFDD} is missing: scripts/setup.sh installs Debian's frr"
        );
        let dir = std::env::temp_dir().join(format!("patronus-bfdd-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        // bfdd drops to the frr user, which must reach its sockets.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        // Its log, with state changes stamped to the microsecond (UTC, as
        // the environment below sets): the benchmark reads detection times
        // from it. The frr user must be able to write it.
        let log = dir.join("bfdd.log");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let conf_path = dir.join("bfdd.conf");
        let conf = format!(
            "log file {}\nlog timestamp precision 6\ndebug bfd peer\n{conf}",
            log.display()
        );
        std::fs::write(&conf_path, conf).unwrap();
        std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let child = ns.spawn(&[
            "env",
            "TZ=UTC",
            BFDD,
            "-f",
            &path("bfdd.conf"),
            "-i",
            &path("bfdd.pid"),
            "--vty_socket",
            dir.to_str().unwrap(),
            "-z",
            &path("zserv.api"),
            "--bfdctl",
            &path("bfdd.sock"),
        ]);
        let b = Bfdd {
            child: Some(child),
            dir,
            ns: ns.name.clone(),
        };
        assert!(
            eventually(Duration::from_secs(10), || b.dir.join("bfdd.vty").exists()),
            "bfdd did not start"
        );
        b
    }

    /// Runs `commands` in `vtysh` against this bfdd; its output.
    pub fn vtysh(&self, commands: &[&str]) -> String {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.ns,
            "vtysh",
            "--vty_socket",
            self.dir.to_str().unwrap(),
        ];
        for c in commands {
            args.extend(["-c", c]);
        }
        must(&args)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bfdd.log")).unwrap_or_default()
    }

    /// When it first logged a session with `peer` going from `from` to
    /// `to` at or after `since` (`state-change: [... peer:ADDR ...] up ->
    /// down`, stamped `YYYY/MM/DD HH:MM:SS.ffffff` in UTC).
    pub fn state_change_after(
        &self,
        peer: &str,
        (from, to): (&str, &str),
        since: std::time::SystemTime,
    ) -> Option<std::time::SystemTime> {
        let needle = format!("peer:{peer} ");
        let change = format!("] {from} -> {to}");
        self.log()
            .lines()
            .filter(|l| l.contains("state-change:") && l.contains(&needle) && l.contains(&change))
            .filter_map(log_time)
            .find(|t| *t >= since)
    }

    /// Kills it (SIGKILL: it says nothing more).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The time a bfdd log line starts with.
fn log_time(line: &str) -> Option<std::time::SystemTime> {
    let (date, rest) = line.split_once(' ')?;
    let time = rest.split(' ').next()?;
    let d: Vec<i64> = date
        .split('/')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, micros) = time.split_once('.')?;
    let t: Vec<u64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (&[y, m, day], &[h, min, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3_600 + min * 60 + s;
    let micros: u64 = micros.parse().ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}
