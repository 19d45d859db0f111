//! The README documents the closed set of condition reasons; keep it complete.

use idp_bridge::crd::conditions::Reason;

#[test]
fn every_condition_reason_is_documented() {
    let readme = include_str!("../../README.md");
    for reason in Reason::ALL {
        assert!(readme.contains(&format!("| `{}` |", reason.as_str())), "README.md's reasons table lacks {}", reason.as_str());
    }
}

#[test]
fn the_readme_names_both_setup_commands() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains("scripts/demo.sh") && readme.contains("scripts/test.sh"));
    assert!(include_str!("../../.ci/run").contains("scripts/test.sh"), ".ci/run runs the README's test command");
}

/// The per-guide tables of what is left by hand: every count below a table is that table's.
#[test]
fn the_steps_left_by_hand_are_counted_right() {
    let readme = include_str!("../../README.md");
    let start = readme.find("#### What is left by hand, per seed guide").expect("the section exists");
    let section = &readme[start..];
    let section = &section[..section[5..].find("\n### ").map_or(section.len(), |i| i + 5)];
    let mut rows: Vec<&str> = Vec::new();
    let mut guides = 0;
    for line in section.lines() {
        if let Some(cells) = line.strip_prefix("| ") {
            let verdict = cells.split(" | ").nth(1).unwrap_or_default();
            if !verdict.starts_with("With idp-bridge") && !verdict.starts_with("---") && !cells.starts_with("---") {
                rows.push(verdict);
            }
            continue;
        }
        let Some(counts) = line.strip_prefix("Left by hand: ") else { continue };
        let number = |text: &str| -> usize { text.trim_matches(|c: char| !c.is_ascii_digit()).parse().unwrap() };
        let words: Vec<&str> = counts.split_whitespace().collect();
        let by_hand = rows.iter().filter(|v| v.starts_with("manual") || v.starts_with("checked")).count();
        let checked = rows.iter().filter(|v| v.starts_with("checked")).count();
        let managed = rows.iter().filter(|v| v.starts_with("checked") && v.contains("done with")).count();
        assert_eq!(number(words[0]), by_hand, "{line}");
        assert_eq!(number(words[2]), rows.len(), "{line}");
        assert_eq!(number(words[3]), checked, "{line}");
        if let Some(with_manage) = counts.split("; ").nth(1) {
            assert_eq!(number(with_manage.split_whitespace().next().unwrap()), by_hand - managed, "{line}");
        }
        rows.clear();
        guides += 1;
    }
    assert_eq!(guides, 5, "one table per seed guide");
}
