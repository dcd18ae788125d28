//! Property tests of the dataset parsers: whatever bytes arrive, in whatever chunks,
//! validation answers (no panic) and answers the same as parsing the whole file at once.

use hone_domain::dataset::{parse_examples, DatasetFormat, DatasetLimits, DatasetValidator};
use proptest::prelude::*;

/// Validates `bytes` fed in the pieces `cuts` makes.
fn validate_in_chunks(
    format: DatasetFormat,
    bytes: &[u8],
    cuts: &[usize],
) -> Result<(u64, String), String> {
    let mut validator = DatasetValidator::new(format, DatasetLimits::default());
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        validator
            .push(&bytes[start..cut])
            .map_err(|e| e.to_string())?;
        start = cut;
    }
    validator
        .finish()
        .map(|s| (s.examples, s.sha256))
        .map_err(|e| e.to_string())
}

/// Lines that are often almost valid: JSON objects with the right or nearly right
/// keys and values of every type, CSV-like rows, broken UTF-8 and quotes.
fn line() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-z ]{0,8}".prop_map(|s| format!("{s:?}")),
        Just("\"\"".to_owned()),
        Just("1".to_owned()),
        Just("null".to_owned()),
        Just("[\"a\", \"b\"]".to_owned()),
        Just("{\"t\": \"x\"}".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ];
    let key = prop_oneof![
        Just("text"),
        Just("label"),
        Just("labels"),
        Just("text_pair"),
        Just("other"),
    ];
    prop_oneof![
        proptest::collection::vec((key, value), 0..4).prop_map(|fields| {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("{{{}}}", body.join(", "))
        }),
        "[ -~]{0,20}",
        Just("text,label".to_owned()),
        Just("\"a, b\",pos".to_owned()),
        Just("\"unterminated,neg".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        csv in any::<bool>(),
    ) {
        let format = if csv { DatasetFormat::Csv } else { DatasetFormat::Jsonl };
        let whole = validate_in_chunks(format, &bytes, &[]);
        prop_assert_eq!(&whole, &validate_in_chunks(format, &bytes, &cuts));
        let parsed = parse_examples(format, &bytes).map(|e| e.len() as u64);
        prop_assert_eq!(whole.map(|w| w.0).ok(), parsed.ok());
    }

    #[test]
    fn nearly_valid_files_agree_between_validation_and_parsing(
        lines in proptest::collection::vec(line(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        csv in any::<bool>(),
    ) {
        let format = if csv { DatasetFormat::Csv } else { DatasetFormat::Jsonl };
        let mut text = lines.join(if crlf { "\r\n" } else { "\n" });
        if bom {
            text.insert(0, '\u{feff}');
        }
        let bytes = text.into_bytes();
        let whole = validate_in_chunks(format, &bytes, &[]);
        prop_assert_eq!(&whole, &validate_in_chunks(format, &bytes, &cuts));
        let parsed = parse_examples(format, &bytes).map(|e| e.len() as u64);
        prop_assert_eq!(whole.map(|w| w.0).ok(), parsed.ok());
    }
}
