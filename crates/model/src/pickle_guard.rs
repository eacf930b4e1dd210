//! A dry run of a `.pth` file's pickle before candle's reader builds it: the same opcodes, with
//! each object reduced to how deeply it nests and how many objects it holds. candle's reader
//! builds objects recursively and copies an object on every memo fetch, so a deeply nested
//! pickle overflows the stack (an abort no `catch_unwind` catches) and a small pickle that
//! fetches a memoised list of lists of itself expands into billions of objects. A state dict
//! nests a few levels and holds tens of thousands of objects; the bounds here are far above.

use std::collections::HashMap;

/// How deeply objects may nest (a state dict: under 10).
pub(crate) const MAX_DEPTH: u32 = 1000;
/// How many objects one object may hold, memo copies included (a ResNet-50 state dict: ~10⁴).
pub(crate) const MAX_OBJECTS: u64 = 20_000_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    Mark,
    Object { depth: u32, objects: u64 },
}

const LEAF: Entry = Entry::Object { depth: 1, objects: 1 };

/// Reads `n` bytes after `pos` (the opcode's argument).
fn take(bytes: &[u8], pos: &mut usize, n: usize) -> Result<std::ops::Range<usize>, String> {
    let range = *pos..pos.checked_add(n).ok_or("argument length overflows")?;
    if range.end > bytes.len() {
        return Err("the pickle ends inside an opcode's argument".into());
    }
    *pos = range.end;
    Ok(range)
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))
}

/// Checks `pickle` against [`MAX_DEPTH`] and [`MAX_OBJECTS`]. Opcodes candle's reader does not
/// know, and malformed stacks, end the dry run without a verdict: the reader reports those.
pub(crate) fn check(pickle: &[u8]) -> Result<(), String> {
    let mut stack: Vec<Entry> = Vec::new();
    let mut memo: HashMap<u32, Entry> = HashMap::new();
    let mut pos = 0;
    // The entries above the topmost mark, folded into one object.
    let fold = |entries: &[Entry]| -> Option<(u32, u64)> {
        entries.iter().try_fold((0u32, 0u64), |(d, n), e| match e {
            Entry::Object { depth, objects } => Some((d.max(*depth), n.saturating_add(*objects))),
            Entry::Mark => None,
        })
    };
    let pop_to_mark = |stack: &mut Vec<Entry>| -> Option<(u32, u64)> {
        let mark = stack.iter().rposition(|e| matches!(e, Entry::Mark))?;
        let folded = fold(&stack[mark + 1..])?;
        stack.truncate(mark);
        Some(folded)
    };
    let pop_n = |stack: &mut Vec<Entry>, n: usize| -> Option<(u32, u64)> {
        let start = stack.len().checked_sub(n)?;
        let folded = fold(&stack[start..])?;
        stack.truncate(start);
        Some(folded)
    };
    while pos < pickle.len() {
        let op = pickle[pos];
        pos += 1;
        // (depth, objects) of what this opcode adds to the top object or pushes, if anything.
        let mut pushed: Option<Entry> = None;
        let mut into_top: Option<(u32, u64)> = None;
        match op {
            0x80 => {
                take(pickle, &mut pos, 1)?;
            }
            b'c' => {
                for _ in 0..2 {
                    let line = pickle[pos..].iter().position(|&b| b == b'\n').ok_or("an unterminated GLOBAL")?;
                    pos += line + 1;
                }
                pushed = Some(LEAF);
            }
            b'K' | b'M' | b'J' | b'G' => {
                let n = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                take(pickle, &mut pos, n)?;
                pushed = Some(LEAF);
            }
            0x8a => {
                let n = pickle[take(pickle, &mut pos, 1)?][0];
                take(pickle, &mut pos, usize::from(n))?;
                pushed = Some(LEAF);
            }
            b'X' => {
                let len = le_u32(&pickle[take(pickle, &mut pos, 4)?]);
                take(pickle, &mut pos, len as usize)?;
                pushed = Some(Entry::Object { depth: 1, objects: 1 + u64::from(len) / 64 });
            }
            0x88 | 0x89 | b'N' | b')' | b']' | b'}' => pushed = Some(LEAF),
            b'(' => pushed = Some(Entry::Mark),
            b'Q' => pushed = pop_n(&mut stack, 1).map(wrap),
            0x85..=0x87 => pushed = pop_n(&mut stack, usize::from(op - 0x84)).map(wrap),
            b'R' | 0x81 => pushed = pop_n(&mut stack, 2).map(wrap),
            b't' | b'd' => pushed = pop_to_mark(&mut stack).map(wrap),
            b'a' | b'b' => into_top = pop_n(&mut stack, 1),
            b's' => into_top = pop_n(&mut stack, 2),
            b'e' | b'u' => into_top = pop_to_mark(&mut stack),
            b'h' | b'j' => {
                let key = if op == b'h' {
                    u32::from(pickle[take(pickle, &mut pos, 1)?][0])
                } else {
                    le_u32(&pickle[take(pickle, &mut pos, 4)?])
                };
                pushed = Some(*memo.get(&key).ok_or("a memo fetch before its store")?);
            }
            b'q' | b'r' => {
                let key = if op == b'q' {
                    u32::from(pickle[take(pickle, &mut pos, 1)?][0])
                } else {
                    le_u32(&pickle[take(pickle, &mut pos, 4)?])
                };
                if let Some(top) = stack.last() {
                    memo.insert(key, *top);
                }
            }
            b'.' => return Ok(()),
            // An opcode candle does not read: its reader will say so.
            _ => return Ok(()),
        }
        let created = match (pushed, into_top) {
            (Some(entry), _) => {
                stack.push(entry);
                entry
            }
            (None, Some((depth, objects))) => match stack.last_mut() {
                Some(Entry::Object { depth: d, objects: n }) => {
                    *d = (*d).max(depth + 1);
                    *n = n.saturating_add(objects);
                    Entry::Object { depth: *d, objects: *n }
                }
                _ => return Ok(()),
            },
            (None, None) => continue,
        };
        if let Entry::Object { depth, objects } = created {
            if depth > MAX_DEPTH {
                return Err(format!("objects nest more than {MAX_DEPTH} deep (a state dict nests a few levels)"));
            }
            if objects > MAX_OBJECTS {
                return Err(format!(
                    "one object would hold more than {MAX_OBJECTS} objects (memo copies included): not a state dict"
                ));
            }
        }
    }
    Ok(())
}

/// An object holding the folded ones.
fn wrap((depth, objects): (u32, u64)) -> Entry {
    Entry::Object { depth: depth + 1, objects: objects.saturating_add(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deeply_nested_pickle_is_refused() {
        // [[[[...]]]]: 100,000 empty lists, each appended to the one below.
        let n = 100_000;
        let mut pickle = vec![0x80, 2];
        pickle.extend(std::iter::repeat_n(b']', n));
        pickle.extend(std::iter::repeat_n(b'a', n - 1));
        pickle.push(b'.');
        let err = check(&pickle).unwrap_err();
        assert!(err.contains("nest"), "{err}");
        // The same shape 20 deep is fine.
        let mut shallow = vec![0x80, 2];
        shallow.extend(std::iter::repeat_n(b']', 20));
        shallow.extend(std::iter::repeat_n(b'a', 19));
        shallow.push(b'.');
        check(&shallow).unwrap();
    }

    #[test]
    fn a_memo_bomb_is_refused() {
        // l0 = []; l(k+1) = [lk, lk] (each fetched from the memo): 2^40 objects from 200 bytes.
        let mut pickle = vec![0x80, 2, b']', b'q', 0];
        for k in 0..40u8 {
            pickle.extend([b']', b'h', k, b'a', b'h', k, b'a', b'q', k + 1]);
        }
        pickle.push(b'.');
        assert!(pickle.len() < 400);
        let err = check(&pickle).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn truncated_arguments_are_errors_and_unknown_opcodes_are_left_to_the_reader() {
        assert!(check(&[0x80, 2, b'X', 10, 0, 0, 0, b'a']).unwrap_err().contains("ends inside"));
        check(&[0x80, 2, b'Z', b'.']).unwrap();
    }
}
