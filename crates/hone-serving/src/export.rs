//! A published model as a `.tar.gz` that works without hone: every file of its directory
//! (weights, config, tokenizer, `hone_model.json`, `manifest.json`) in one folder, with
//! the README that loads it in Python and `preprocessing.json` ([`hone_train::export`]).
//!
//! [`Archive::prepare`] does everything that can fail for a reason of the model's own
//! (a file missing, a `hone_model.json` it cannot read) before a byte is sent, so that
//! such a failure is an error answer rather than a cut-off download; [`Archive::write`]
//! then writes to any `Write`, a file at a time through a small buffer, so a download
//! streams and the archive is never held in memory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use hone_train::export::{guide, PREPROCESSING_FILE, README_FILE};
use hone_train::model_dir::Manifest;
use hone_train::TrainError;

/// What goes into one model's archive.
#[derive(Debug)]
pub struct Archive {
    folder: String,
    /// The directory's files: name in the archive, path on disk.
    files: Vec<(String, PathBuf)>,
    /// The files made for the archive: name, bytes.
    generated: Vec<(String, Vec<u8>)>,
    /// Every entry's modification time: when the model was made, so that the same
    /// model always gives the same bytes.
    mtime: u64,
}

/// The folder a model's archive unpacks into: its id with anything but letters, digits,
/// `.`, `_` and `-` made `-` (`ft:all-MiniLM-L6-v2:reviews:9d0e1f2a` unpacks into
/// `ft-all-MiniLM-L6-v2-reviews-9d0e1f2a`, a name every filesystem takes).
pub fn folder_name(model_id: &str) -> String {
    model_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl Archive {
    /// Lists the files of the model directory `dir` (hidden ones, which the artifact
    /// store keeps for itself, and any README of its own left out) and makes the README
    /// and preprocessing of `model_id`.
    pub fn prepare(dir: &Path, model_id: &str) -> Result<Self, TrainError> {
        let folder = folder_name(model_id);
        let guide = guide(dir, model_id, &folder)?;
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(dir, e))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|e| TrainError::io(&path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let ours = name == README_FILE || name == PREPROCESSING_FILE;
            if file_type.is_file() && !name.starts_with('.') && !ours {
                files.push((name, path));
            }
        }
        files.sort();
        let mtime = Manifest::read(dir)
            .ok()
            .and_then(|m| u64::try_from(m.created_at.timestamp()).ok())
            .unwrap_or(0);
        Ok(Self {
            folder,
            files,
            generated: vec![
                (README_FILE.to_owned(), guide.readme.into_bytes()),
                (PREPROCESSING_FILE.to_owned(), guide.preprocessing),
            ],
            mtime,
        })
    }

    /// The folder the archive unpacks into.
    pub fn folder(&self) -> &str {
        &self.folder
    }

    /// Writes the gzip-compressed tar to `out`: the folder, the README and
    /// preprocessing first (what a reader of a listing looks for), then the directory's
    /// files by name. Returns `out`, flushed.
    pub fn write<W: Write>(self, out: W) -> io::Result<W> {
        // Weights are most of the bytes and barely compress: the fastest level costs
        // a fraction of the default's time for nearly the same size.
        let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
        let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut header, format!("{}/", self.folder), io::empty())?;
        for (name, bytes) in &self.generated {
            let mut header = self.header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            tar.append_data(
                &mut header,
                format!("{}/{name}", self.folder),
                bytes.as_slice(),
            )?;
        }
        for (name, path) in &self.files {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            let mut header = self.header(tar::EntryType::Regular, 0o644, size);
            // `take`: a file that grew since would not match its header's size.
            let reader = io::Read::take(file, size);
            tar.append_data(&mut header, format!("{}/{name}", self.folder), reader)?;
        }
        let mut out = tar.into_inner()?.finish()?;
        out.flush()?;
        Ok(out)
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_keep_only_portable_characters() {
        assert_eq!(
            folder_name("ft:all-MiniLM-L6-v2:reviews:9d0e1f2a"),
            "ft-all-MiniLM-L6-v2-reviews-9d0e1f2a"
        );
        assert_eq!(folder_name("ft:a/../b c"), "ft-a-..-b-c");
    }
}
