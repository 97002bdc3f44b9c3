//! Recall and false-positive rate on the labelled set (issue 5 targets:
//! recall >= 0.95, false-positive rate <= 5%). A case is detected when the
//! scanner reports anything for it.

use brig_scan::Scanner;

struct Case {
    positive: bool,
    id: String,
    file: String,
    content: String,
}

fn cases() -> Vec<Case> {
    let text = include_str!("labelled/cases.txt");
    let mut out: Vec<Case> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(head) = line.strip_prefix("### ") {
            let mut it = head.split_whitespace();
            let (label, id, file) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            assert!(
                label == "positive" || label == "negative",
                "bad label {label}"
            );
            out.push(Case {
                positive: label == "positive",
                id: id.into(),
                file: file.into(),
                content: String::new(),
            });
        } else if let Some(c) = out.last_mut() {
            c.content.push_str(line);
        }
    }
    out
}

#[test]
fn recall_and_false_positive_rate_meet_the_targets() {
    let sc = Scanner::builtin();
    let cases = cases();
    let (mut tp, mut pos, mut fp, mut neg) = (0, 0, 0, 0);
    let mut misses = Vec::new();
    for c in &cases {
        let found = sc.scan_blob(&c.file, c.content.as_bytes());
        if c.positive {
            pos += 1;
            if found.is_empty() {
                misses.push(format!("missed {} ({})", c.id, c.file));
            } else {
                tp += 1;
            }
        } else {
            neg += 1;
            if !found.is_empty() {
                fp += 1;
                misses.push(format!(
                    "false positive {} ({}): {:?}",
                    c.id,
                    c.file,
                    found.iter().map(|f| &f.rule).collect::<Vec<_>>()
                ));
            }
        }
        // What a positive case's finding reports never holds its long tokens.
        for f in found.iter().filter(|_| c.positive) {
            let json = serde_json::to_string(f).unwrap();
            for token in c
                .content
                .split(|ch: char| ch.is_whitespace() || "\"'=:;,(){}<>`".contains(ch))
            {
                if token.len() >= 20 && token.chars().any(|ch| ch.is_ascii_digit()) {
                    assert!(
                        !json.contains(token),
                        "{}: finding holds `{token}`: {json}",
                        c.id
                    );
                }
            }
        }
    }
    let recall = tp as f64 / pos as f64;
    let fpr = fp as f64 / neg as f64;
    println!("labelled set: {pos} positives, {neg} negatives; recall {recall:.3}, false-positive rate {fpr:.3}");
    for m in &misses {
        println!("  {m}");
    }
    assert!(pos >= 50 && neg >= 50, "the set is too small");
    assert!(recall >= 0.95, "recall {recall:.3} < 0.95: {misses:#?}");
    assert!(
        fpr <= 0.05,
        "false-positive rate {fpr:.3} > 0.05: {misses:#?}"
    );
}
