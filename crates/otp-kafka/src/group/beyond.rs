//! Offsets finished *beyond* a committed position, written in the commit's metadata.
//!
//! A partition commits one position, its lowest unfinished offset. Messages after it may be
//! finished already (sent, and their status acknowledged) while an earlier one is still
//! waiting: a retry queued behind the rate limit, a slow provider call. If the partition then
//! moves (a rebalance, a stop whose grace ran out, a crash after a commit), its next owner
//! reads from the position and would do that later work again: for a worker, send a code a
//! second time. So each commit also names the offsets finished beyond its position, and a new
//! owner reads them at assignment and skips those messages (as Confluent's parallel consumer
//! does with its offset map).
//!
//! The text is `otp-finished@`, the position it was written for, `=`, and comma-separated
//! ranges of offsets counted from that position, ascending: `otp-finished@100=1-3,7` says 101,
//! 102, 103 and 107 are finished. A note read beside another offset than its own is ignored:
//! tools that move a group's offsets (MirrorMaker 2 translating them to another cluster, a
//! reset) copy the metadata unchanged, and its offsets would then name other messages. It is
//! bounded (brokers refuse metadata over `offset.metadata.max.bytes`, 4,096 bytes by default):
//! ranges that do not fit are left out, and their messages are simply read and handled again,
//! as without this note. Metadata that is not ours, or not well formed, is ignored the same way.

use std::collections::BTreeSet;

const PREFIX: &str = "otp-finished@";

/// The longest note written, in bytes: a quarter of the broker's default limit.
pub const MAX_NOTE: usize = 1024;

/// The most offsets a note names (written or read): a bound on what a new owner holds.
pub const MAX_NAMED: i64 = 100_000;

/// The note for `finished` (offsets above `position`, ascending; others are ignored).
pub fn encode(position: i64, finished: &BTreeSet<i64>) -> String {
    let head = format!("{PREFIX}{position}=");
    let mut note = String::new();
    let mut named = 0;
    let mut ranges = finished.range(position.saturating_add(1)..).peekable();
    while let Some(&start) = ranges.next() {
        let mut end = start;
        while ranges.next_if(|&&next| next == end + 1).is_some() {
            end += 1;
        }
        let range = match end == start {
            true => format!("{}", start - position),
            false => format!("{}-{}", start - position, end - position),
        };
        let separator = usize::from(!note.is_empty());
        named += end - start + 1;
        if head.len() + note.len() + separator + range.len() > MAX_NOTE || named > MAX_NAMED {
            break;
        }
        if separator == 1 {
            note.push(',');
        }
        note.push_str(&range);
    }
    match note.is_empty() {
        true => String::new(),
        false => format!("{head}{note}"),
    }
}

/// The offsets a note names as finished, when it was written for `position`; none when it is
/// not one of ours, was written for another offset, or is not well formed (then the messages
/// are handled again, never skipped wrongly).
pub fn decode(position: i64, note: &str) -> BTreeSet<i64> {
    let parse = || -> Option<BTreeSet<i64>> {
        let (written_at, ranges) = note.strip_prefix(PREFIX)?.split_once('=')?;
        if written_at.parse::<i64>().ok()? != position {
            return None;
        }
        let mut out = BTreeSet::new();
        let mut after = 0; // ranges ascend, apart
        for range in ranges.split(',') {
            let (start, end) = match range.split_once('-') {
                Some((start, end)) => (start.parse::<i64>().ok()?, end.parse::<i64>().ok()?),
                None => {
                    let at = range.parse::<i64>().ok()?;
                    (at, at)
                }
            };
            let count = end.checked_sub(start)?.checked_add(1)?;
            if start <= after || count < 1 || out.len() as i64 + count > MAX_NAMED {
                return None;
            }
            position.checked_add(end)?;
            out.extend((start..=end).map(|delta| position + delta));
            after = end;
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(offsets: &[i64]) -> BTreeSet<i64> {
        offsets.iter().copied().collect()
    }

    #[test]
    fn ranges_count_from_the_position_and_read_back_the_same() {
        let finished = set(&[101, 102, 103, 107, 109, 110]);
        let note = encode(100, &finished);
        assert_eq!(note, "otp-finished@100=1-3,7,9-10");
        assert_eq!(decode(100, &note), finished);
    }

    #[test]
    fn nothing_beyond_the_position_writes_no_note() {
        assert_eq!(encode(100, &set(&[])), "");
        assert_eq!(encode(100, &set(&[90, 100])), "", "at or below: not beyond");
        assert!(decode(100, "").is_empty());
    }

    #[test]
    fn a_long_note_is_cut_at_a_whole_range_within_the_bound() {
        let finished: BTreeSet<i64> = (0..2000).map(|i| 1_000_000 + 2 * i).collect();
        let note = encode(999_990, &finished);
        assert!(note.len() <= MAX_NOTE, "{}", note.len());
        let back = decode(999_990, &note);
        assert!(!back.is_empty() && back.len() < finished.len());
        assert!(back.is_subset(&finished), "only what was finished");
        let first_left_out = finished.iter().find(|o| !back.contains(o)).unwrap();
        assert!(
            back.iter().all(|o| o < first_left_out),
            "the lowest are kept"
        );
    }

    #[test]
    fn a_note_not_ours_or_not_well_formed_names_nothing() {
        for note in [
            "written by another tool",
            "otp-finished@100=",
            "otp-finished@100=1-",
            "otp-finished@100=0",
            "otp-finished@100=-3",
            "otp-finished@100=5-2",
            "otp-finished@100=1,x",
            "otp-finished@100=3,1",
            "otp-finished@100=1-3,2",
            "otp-finished@100=1-99999999999",
            "otp-finished@100=1-60000,60002-120000",
            "otp-finished@100=2,3,1-9223372036854775807",
            "otp-finished@100=9223372036854775807",
            "otp-finished=1-3",
        ] {
            assert!(decode(100, note).is_empty(), "{note}");
        }
    }

    #[test]
    fn a_note_beside_another_offset_than_its_own_names_nothing() {
        // A tool that moved the group's offset (MirrorMaker 2 to another cluster) kept the note.
        let note = encode(100, &set(&[101, 102]));
        assert_eq!(decode(100, &note), set(&[101, 102]));
        assert!(decode(5_000, &note).is_empty());
    }

    #[test]
    fn a_note_names_at_most_its_bound() {
        let finished: BTreeSet<i64> = (1..=MAX_NAMED + 10).collect();
        let note = encode(0, &finished);
        assert_eq!(
            note, "",
            "one range over the bound: nothing named, all read again"
        );
        let mut two: BTreeSet<i64> = (1..=10).collect();
        two.extend(12..=MAX_NAMED + 20);
        assert_eq!(decode(0, &encode(0, &two)), (1..=10).collect());
    }
}
