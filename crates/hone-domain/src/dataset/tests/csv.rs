//! CSV files: header, quoting, columns and their errors; the helpers are the parent
//! module's.

use super::*;

#[test]
fn csv_summary_and_examples() {
    let data = "text,label\ngood,pos\nbad,neg\n\"great, really\",pos\n";
    let summary = csv(data).unwrap();
    assert_eq!(summary.format, CSV);
    assert_eq!(summary.examples, 3);
    assert_eq!(summary.bytes, data.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(data.as_bytes())));
    assert_eq!(summary.label_counts, counts(&[("neg", 1), ("pos", 2)]));
    let examples = parse_examples(CSV, data.as_bytes()).unwrap();
    assert_eq!(
        examples[2],
        Example {
            text: "great, really".into(),
            text_pair: None,
            target: Target::Single("pos".into()),
        }
    );
}

#[test]
fn csv_columns_in_any_order_with_others_ignored() {
    let data = "id, label ,source,text\n1,pos,web,good\n2,neg,,bad\n";
    let examples = parse_examples(CSV, data.as_bytes()).unwrap();
    assert_eq!(
        examples[1],
        Example {
            text: "bad".into(),
            text_pair: None,
            target: Target::Single("neg".into()),
        }
    );
    assert_eq!(csv(data).unwrap().examples, 2);
}

#[test]
fn csv_quoted_fields_with_newlines_quotes_and_crlf() {
    let data = "text,label\r\n\"line one\r\nline \"\"two\"\"\nthree\",pos\r\nplain,neg\r\n";
    let summary = csv(data).unwrap();
    assert_eq!(summary.examples, 2);
    let examples = parse_examples(CSV, data.as_bytes()).unwrap();
    assert_eq!(examples[0].text, "line one\r\nline \"two\"\nthree");
    // Lines are physical lines: the record after the three-line field starts on line 5.
    let bad = format!("{data}\"a\nb\",\n");
    fails(csv(&bad), Some(6), Some("label"), K::EmptyField);
}

#[test]
fn csv_quote_inside_an_unquoted_field_is_data() {
    let data = "text,label\n5\" screen,pos\nok,neg\n";
    let examples = parse_examples(CSV, data.as_bytes()).unwrap();
    assert_eq!(examples[0].text, "5\" screen");
    assert_eq!(csv(data).unwrap().examples, 2);
}

#[test]
fn csv_blank_lines_are_skipped() {
    let data = "\ntext,label\n\ngood,pos\r\n\r\nbad,neg\n\n";
    assert_eq!(csv(data).unwrap().examples, 2);
    // Line numbers still count them.
    fails(
        csv("text,label\n\n\n,pos\n"),
        Some(4),
        Some("text"),
        K::EmptyField,
    );
}

#[test]
fn csv_byte_order_mark_is_skipped() {
    let data = "\u{FEFF}text,label\ngood,pos\nbad,neg\n";
    let summary = csv(data).unwrap();
    assert_eq!(summary.examples, 2);
    assert_eq!(summary.bytes, data.len() as u64);
}

#[test]
fn csv_header_must_name_text_and_label() {
    fails(
        csv("Text,label\na,b\n"),
        Some(1),
        Some("text"),
        K::MissingColumn,
    );
    fails(
        csv("text,labels\na,b\n"),
        Some(1),
        Some("label"),
        K::MissingColumn,
    );
    fails(
        csv("\n\nsentence,category\na,b\n"),
        Some(3),
        Some("text"),
        K::MissingColumn,
    );
    fails(
        csv("text,label,text\na,b,c\n"),
        Some(1),
        Some("text"),
        K::InvalidCsv,
    );
    fails(csv("text,label\n"), None, None, K::Empty);
    fails(csv("text,label"), None, None, K::Empty);
}

#[test]
fn csv_records_must_have_the_header_width() {
    let e = fails(
        csv("text,label\na,b\nc\nd,e\n"),
        Some(3),
        None,
        K::InvalidCsv,
    );
    assert_eq!(e.message, "has 1 fields but the header has 2");
    fails(csv("text,label\na,b,c\n"), Some(2), None, K::InvalidCsv);
}

#[test]
fn csv_unterminated_quote_names_where_it_opened() {
    let e = fails(
        csv("text,label\na,b\nc,d\n\"never closed,x\ne,f\n"),
        Some(4),
        None,
        K::InvalidCsv,
    );
    assert!(e.message.contains("never closed"), "{e}");
    fails(
        csv("text,label\na,\"b\nc\nd,\"e\n"),
        Some(4),
        None,
        K::InvalidCsv,
    );
}

#[test]
fn csv_stray_character_after_a_closing_quote() {
    let e = fails(
        csv("text,label\na,b\n\"he said \"hi\" to me\",pos\n"),
        Some(3),
        None,
        K::InvalidCsv,
    );
    assert!(e.message.contains("`h`"), "{e}");
    // Placed on the physical line of the stray character.
    fails(
        csv("text,label\n\"a\nb\"c,pos\n"),
        Some(3),
        None,
        K::InvalidCsv,
    );
    fails(
        csv("text,label\n\"a\"\rb,pos\n"),
        Some(2),
        None,
        K::InvalidCsv,
    );
    // `"` + CRLF is the normal end of a record.
    assert_eq!(
        csv("text,label\r\n\"a\",\"pos\"\r\n\"b\",\"neg\"\r")
            .unwrap()
            .examples,
        2
    );
}

#[test]
fn csv_invalid_utf8_names_the_line_of_the_byte() {
    let data = b"text,label\na,b\n\"first\nsecond \xFF\",x\n";
    let e = fails(check(CSV, data), Some(4), None, K::InvalidUtf8);
    assert!(e.message.contains("0xFF"), "{e}");
    // In a column that is otherwise ignored, too: the file as a whole must be UTF-8.
    fails(
        check(CSV, b"text,label,x\na,b,\xC0\n"),
        Some(2),
        None,
        K::InvalidUtf8,
    );
}

#[test]
fn csv_labels_are_trimmed_and_texts_kept() {
    let data = "text,label\n \"  padded \" , pos\nother, neg \n";
    let examples = parse_examples(CSV, data.as_bytes()).unwrap();
    assert_eq!(
        examples[1],
        Example {
            text: "other".into(),
            text_pair: None,
            target: Target::Single("neg".into()),
        }
    );
    assert_eq!(
        csv(data).unwrap().label_counts,
        counts(&[("neg", 1), ("pos", 1)])
    );
}
