//! `--pid-file`: the process id, written once the process is up, removed when
//! it exits cleanly.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A written pid file; dropping it removes the file if it still names this process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes `<pid>\n` through a temporary file and a rename, so a reader
    /// never sees a partial file.
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another instance may have taken the path over since: leave its file alone.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_unless_taken_over() {
        let dir = std::env::temp_dir().join(format!("mcp-tunnel-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("agent.pid");
        let f = PidFile::write(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(f);
        assert!(!p.exists());

        let f = PidFile::write(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");

        assert!(PidFile::write(&dir.join("missing/agent.pid")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
