//! Any chunking, any content: the validator's answer does not depend on how the bytes
//! arrive; the helpers are the parent module's.

use super::*;

const JSONL_LINES: &[&[u8]] = &[
    b"{\"text\": \"hello world\", \"label\": \"pos\"}",
    b"{\"label\": 1, \"text\": \"\xC3\xA9t\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x99\x82\"}",
    b"{\"text\": \"a\\nb \\\"q\\\"\", \"label\": true, \"x\": [1, {\"y\": 2}]}",
    b"  {\"text\":\"spaced\",\"label\":\"neg\"}  ",
    b"{\"text\": \"\\u00e9\\ud83d\\ude42\", \"label\": \"neg\"}",
    // Invalid, rarely picked.
    b"{\"text\": \"x\"}",
    b"[1]",
    b"{\"text\": \"x\", \"label\": \"a\"",
    b"{\"text\": \"\xFF\", \"label\": \"a\"}",
    b"",
];

const CSV_ROWS: &[&[u8]] = &[
    b"hello world,pos",
    b"\"quoted, with comma\",neg",
    b"\"multi\nline \"\"quoted\"\"\r\ntext\",pos",
    b"\xC3\xA9t\xC3\xA9 \xF0\x9F\x99\x82, neg ",
    b"\"\"\"\",x",
    b"",
    // Invalid, rarely picked.
    b"\"never closed,pos",
    b"\"a\"b,pos",
    b"one field",
    b"\xFF,pos",
];

const CSV_HEADERS: &[&[u8]] = &[
    b"text,label",
    b"label,text",
    b" text ,extra,label",
    b"\"text\",\"label\"",
];

fn random_file(rng: &mut Rng, format: DatasetFormat) -> Vec<u8> {
    let mut data = Vec::new();
    if rng.below(4) == 0 {
        data.extend_from_slice(BOM);
    }
    let (lines, valid) = match format {
        DatasetFormat::Jsonl => (JSONL_LINES, 5),
        DatasetFormat::Zip => return data,
        DatasetFormat::Csv => {
            data.extend_from_slice(CSV_HEADERS[rng.below(CSV_HEADERS.len())]);
            data.extend_from_slice(b"\n");
            (CSV_ROWS, 6)
        }
    };
    for _ in 0..rng.below(12) {
        let pick = if rng.below(25) == 0 {
            rng.below(lines.len())
        } else {
            rng.below(valid)
        };
        let mut line = lines[pick].to_vec();
        if format == DatasetFormat::Csv && data.starts_with(b"label,text") {
            // Columns swapped: swap the row's two fields when they are simple.
            if let Some(comma) = line
                .iter()
                .position(|&b| b == b',')
                .filter(|_| !line.contains(&b'"'))
            {
                let (a, b) = line.split_at(comma);
                line = [&b[1..], b",", a].concat();
            }
        }
        if format == DatasetFormat::Csv && data.starts_with(b" text ,extra") {
            if let Some(comma) = line
                .iter()
                .position(|&b| b == b',')
                .filter(|_| !line.contains(&b'"'))
            {
                line.insert(comma, b',');
            }
        }
        data.extend_from_slice(&line);
        data.extend_from_slice(if rng.below(3) == 0 { b"\r\n" } else { b"\n" });
    }
    match rng.below(4) {
        0 => {
            data.pop();
        }
        1 => data.extend_from_slice(b"\n\n"),
        _ => {}
    }
    data
}

#[test]
fn any_chunking_gives_the_same_outcome() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Zip archives are not streamed (see `images::tests`).
    for format in [JSONL, CSV] {
        let mut valid = 0;
        for _ in 0..300 {
            let data = random_file(&mut rng, format);
            if check(format, &data).is_ok() {
                valid += 1;
            }
        }
        // The generator must exercise both outcomes.
        assert!((50..290).contains(&valid), "{format}: {valid} of 300 valid");
    }
}

#[test]
fn a_long_record_in_tiny_chunks_is_scanned_once() {
    // Rescanning the pending record on every push would take ~10^12 steps here.
    let text = "word ".repeat(400_000);
    for (format, data) in [
        (JSONL, format!("{{\"text\": \"{text}\", \"label\": \"a\"}}\n{{\"text\": \"b\", \"label\": \"b\"}}\n")),
        (CSV, format!("text,label\n\"{}\",a\nb,b\n", text.replace(' ', "\n"))),
    ] {
        let limits = limited(|l| l.max_text_chars = usize::MAX);
        let mut validator = DatasetValidator::new(format, limits);
        for byte in data.as_bytes().chunks(1) {
            validator.push(byte).unwrap();
        }
        assert_eq!(validator.finish().unwrap().examples, 2);
    }
}

/// `cargo test -p hone-domain --release -- --ignored --nocapture throughput`
#[test]
#[ignore = "a benchmark; run in release mode"]
fn throughput_100_mb() {
    let mut data = Vec::with_capacity(101 << 20);
    let mut i = 0u64;
    while data.len() < 100 << 20 {
        let line = format!(
            "{{\"text\": \"example number {i}: the quick brown fox jumps over the lazy dog, \\\"quoted\\\" and caf\u{e9}\", \"label\": \"class{}\", \"id\": {i}}}\n",
            i % 7
        );
        data.extend_from_slice(line.as_bytes());
        i += 1;
    }
    for chunk in [64 << 10, 1 << 10] {
        let start = std::time::Instant::now();
        let mut validator = DatasetValidator::new(JSONL, DatasetLimits::default());
        for piece in data.chunks(chunk) {
            validator.push(piece).unwrap();
        }
        let summary = validator.finish().unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} MB in {chunk}-byte chunks, {} examples: {secs:.2} s, {:.0} MB/s",
            data.len() >> 20,
            summary.examples,
            data.len() as f64 / 1e6 / secs
        );
    }
    let start = std::time::Instant::now();
    let examples = parse_examples(JSONL, &data).unwrap();
    println!(
        "parse_examples: {} in {:.2} s",
        examples.len(),
        start.elapsed().as_secs_f64()
    );

    let mut data = b"id,text,label\n".to_vec();
    let mut i = 0u64;
    while data.len() < 100 << 20 {
        let line = format!(
            "{i},\"example number {i}: the quick brown fox, \"\"quoted\"\"\nand caf\u{e9}\",class{}\r\n",
            i % 7
        );
        data.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let start = std::time::Instant::now();
    let limits = limited(|l| l.max_examples = u64::MAX);
    let mut validator = DatasetValidator::new(CSV, limits);
    for piece in data.chunks(64 << 10) {
        validator.push(piece).unwrap();
    }
    let summary = validator.finish().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "CSV: {} examples: {secs:.2} s, {:.0} MB/s",
        summary.examples,
        data.len() as f64 / 1e6 / secs
    );
}
