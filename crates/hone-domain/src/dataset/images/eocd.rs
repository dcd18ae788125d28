//! The number of entries a zip declares, read from its end-of-central-directory record
//! (and the ZIP64 one it may point to) alone: a zip is checked against the entry cap
//! before its central directory is parsed, so that a declared count of billions
//! allocates nothing.

use std::io::{self, Read, Seek, SeekFrom};

const EOCD: [u8; 4] = *b"PK\x05\x06";
const ZIP64_LOCATOR: [u8; 4] = *b"PK\x06\x07";
const ZIP64_EOCD: [u8; 4] = *b"PK\x06\x06";
/// The fixed part of the record; a comment of up to 65,535 bytes may follow it.
const EOCD_LEN: u64 = 22;
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_LEN: usize = 56;

/// The total number of entries the archive declares, or `None` when it has no
/// end-of-central-directory record (it is then no zip, which the zip reader reports).
pub(super) fn declared_entries<R: Read + Seek>(reader: &mut R) -> io::Result<Option<u64>> {
    let len = reader.seek(SeekFrom::End(0))?;
    let tail_len = len.min(EOCD_LEN + u64::from(u16::MAX));
    let tail_start = len - tail_len;
    let mut tail = vec![0; tail_len as usize];
    reader.seek(SeekFrom::Start(tail_start))?;
    reader.read_exact(&mut tail)?;
    // The last signature is the record: an earlier one may be inside the comment.
    let Some(at) = (0..tail.len().saturating_sub(EOCD_LEN as usize - 1))
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD)
    else {
        return Ok(None);
    };
    let record = &tail[at..at + EOCD_LEN as usize];
    let entries = u16::from_le_bytes([record[10], record[11]]);
    if entries != u16::MAX {
        return Ok(Some(u64::from(entries)));
    }
    // 0xFFFF: the count is in the ZIP64 record, which a locator just before names.
    let eocd_offset = tail_start + at as u64;
    let Some(locator_offset) = eocd_offset.checked_sub(ZIP64_LOCATOR_LEN) else {
        return Ok(Some(u64::from(entries)));
    };
    let mut locator = [0u8; ZIP64_LOCATOR_LEN as usize];
    reader.seek(SeekFrom::Start(locator_offset))?;
    reader.read_exact(&mut locator)?;
    if locator[..4] != ZIP64_LOCATOR {
        return Ok(Some(u64::from(entries)));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&locator[8..16]);
    let record_offset = u64::from_le_bytes(offset);
    if record_offset.saturating_add(ZIP64_EOCD_LEN as u64) > len {
        return Ok(None);
    }
    let mut record = [0u8; ZIP64_EOCD_LEN];
    reader.seek(SeekFrom::Start(record_offset))?;
    reader.read_exact(&mut record)?;
    if record[..4] != ZIP64_EOCD {
        return Ok(None);
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&record[32..40]);
    Ok(Some(u64::from_le_bytes(total)))
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn zip_of(entries: usize, comment: &str) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..entries {
            zip.start_file(format!("a/{i}.png"), options)
                .expect("entry");
            zip.write_all(b"x").expect("write");
        }
        zip.set_comment(comment);
        zip.finish().expect("finish").into_inner()
    }

    #[test]
    fn the_count_is_read_from_the_end_record() {
        for n in [0, 1, 7, 300] {
            let bytes = zip_of(n, "");
            assert_eq!(
                declared_entries(&mut Cursor::new(bytes)).expect("read"),
                Some(n as u64)
            );
        }
        // A comment that looks like a record does not fool it.
        let bytes = zip_of(3, "PK\x05\x06 not the record");
        assert_eq!(
            declared_entries(&mut Cursor::new(bytes)).expect("read"),
            Some(3)
        );
    }

    #[test]
    fn a_forged_zip64_count_is_read_without_parsing_the_directory() {
        // A zip whose record defers to a ZIP64 record that claims 2^40 entries.
        let mut bytes = Vec::new();
        let zip64_at = bytes.len() as u64;
        bytes.extend_from_slice(&ZIP64_EOCD);
        bytes.extend_from_slice(&44u64.to_le_bytes()); // size of the rest
        bytes.extend_from_slice(&[45, 0, 45, 0]); // versions
        bytes.extend_from_slice(&[0; 8]); // disk numbers
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes()); // entries on this disk
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes()); // entries in total
        bytes.extend_from_slice(&[0; 16]); // directory size and offset
        bytes.extend_from_slice(&ZIP64_LOCATOR);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&zip64_at.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&EOCD);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&[0xFF; 4]); // entries: see the ZIP64 record
        bytes.extend_from_slice(&[0xFF; 8]);
        bytes.extend_from_slice(&[0; 2]);
        assert_eq!(
            declared_entries(&mut Cursor::new(bytes)).expect("read"),
            Some(1 << 40)
        );
    }

    #[test]
    fn no_record_is_no_count() {
        assert_eq!(
            declared_entries(&mut Cursor::new(b"not a zip at all".to_vec())).expect("read"),
            None
        );
        assert_eq!(
            declared_entries(&mut Cursor::new(Vec::new())).expect("read"),
            None
        );
    }
}
