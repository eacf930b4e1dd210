//! Huffman decoding of baseline JPEG blocks: a 64-bit bit reader that handles byte stuffing,
//! restart markers and the end of the data, and tables that decode most codes (and most AC
//! coefficients whole, code and value together) with one lookup, after stb_image.

use super::ZIGZAG;

/// Bits resolved by one table lookup (tables of 2048 entries, 4 and 8 KiB: 12 bits measured slower).
const FAST_BITS: u32 = 11;

/// The run of a combined AC entry that ends the block.
const END_OF_BLOCK: i32 = 0xFF;

/// One Huffman table, ready for decoding.
#[derive(Debug, Clone)]
pub(super) struct HuffTable {
    /// By the next `FAST_BITS` bits: `(code length << 8) | symbol`, or 0 for a longer code.
    fast: Box<[u16; 1 << FAST_BITS]>,
    /// AC tables, by the next `FAST_BITS` bits, when the code and its value's bits fit:
    /// `(value << 16) | (run << 8) | bits used`, the run being [`END_OF_BLOCK`] for the end of
    /// block (and 15 with value 0 for a run of 16 zeros); else 0.
    fast_ac: Box<[i32; 1 << FAST_BITS]>,
    /// AC tables, for blocks that are read but not kept: by the next `FAST_BITS` bits, the
    /// bits taken by as many whole codes (with their value bits) as fit, the coefficient
    /// positions they advance, and whether the last is the end of block:
    /// `(end of block << 16) | (positions << 8) | bits`; 0 when not even one fits.
    skip_ac: Box<[u32; 1 << FAST_BITS]>,
    /// Per code length: one past the largest code of that length or shorter, left-aligned to
    /// 16 bits (`u32::MAX` past 16).
    max_code: [u32; 18],
    /// Per code length: index in `values` of a code, minus the code.
    delta: [i32; 17],
    values: Vec<u8>,
}

impl HuffTable {
    /// Builds a table from a DHT segment's 16 counts and symbol list.
    pub(super) fn new(counts: &[u8; 16], values: &[u8], is_ac: bool) -> Result<Self, String> {
        let mut fast = Box::new([0u16; 1 << FAST_BITS]);
        let mut max_code = [0u32; 18];
        let mut delta = [0i32; 17];
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            delta[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                if code >= 1 << len {
                    return Err("a Huffman table with more codes than its lengths allow".into());
                }
                if len <= FAST_BITS {
                    let shift = FAST_BITS - len;
                    let entry = ((len as u16) << 8) | u16::from(values[k]);
                    fast[(code << shift) as usize..((code + 1) << shift) as usize].fill(entry);
                }
                code += 1;
                k += 1;
            }
            max_code[len as usize] = code << (16 - len);
            code <<= 1;
        }
        max_code[17] = u32::MAX;
        let mut fast_ac = Box::new([0i32; 1 << FAST_BITS]);
        if is_ac {
            for (i, &entry) in fast.iter().enumerate() {
                let (len, symbol) = (u32::from(entry >> 8), entry & 0xFF);
                let (run, size) = (i32::from(symbol >> 4), u32::from(symbol & 15));
                if len == 0 || len + size > FAST_BITS {
                    continue;
                }
                fast_ac[i] = match (run, size) {
                    (0, 0) => (END_OF_BLOCK << 8) | len as i32,
                    (15, 0) => (15 << 8) | len as i32,
                    (_, 0) => continue, // not a baseline symbol: the slow path reports it
                    _ => {
                        // The value's bits, after the code's, moved to the top as when decoding.
                        let bits = (i as u64) << (64 - FAST_BITS + len);
                        (signed_bits(bits, size) << 16) | (run << 8) | (len + size) as i32
                    }
                };
            }
        }
        let mut skip_ac = Box::new([0u32; 1 << FAST_BITS]);
        if is_ac {
            for (i, entry) in skip_ac.iter_mut().enumerate() {
                *entry = skip_entry(&fast, i as u32);
            }
        }
        Ok(Self { fast, fast_ac, skip_ac, max_code, delta, values: values.to_vec() })
    }
}

/// The [`HuffTable::skip_ac`] entry for the `FAST_BITS` bits `bits`.
fn skip_entry(fast: &[u16; 1 << FAST_BITS], bits: u32) -> u32 {
    let (mut used, mut positions, mut end) = (0u32, 0u32, 0u32);
    while used < FAST_BITS && positions < 64 {
        // The next code, left-aligned; bits past the window are zeros, so a code or value
        // must end inside it to count.
        let entry = fast[((bits << used) & ((1 << FAST_BITS) - 1)) as usize];
        let (len, symbol) = (u32::from(entry >> 8), entry & 0xFF);
        let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
        if len == 0 || used + len + size > FAST_BITS {
            break;
        }
        match (run, size) {
            (0, 0) => {
                used += len;
                end = 1;
                break;
            }
            (15, 0) => positions += 16,
            (_, 0) => break,
            _ => positions += run + 1,
        }
        used += len + size;
    }
    if used == 0 { 0 } else { (end << 16) | (positions << 8) | used }
}

/// Entropy-coded bits, most significant first, from the scan data.
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bits not yet consumed, left-aligned: the top `count` (at most 63) bits; below them, the
    /// next byte's first bits or zeros.
    buf: u64,
    count: u32,
    /// Zero bits fed in past a marker (at the bottom of `buf`).
    padding: u32,
    at_marker: bool,
    /// The first sign of damage met and how many there were (libjpeg's corrupt-data warnings).
    damage: Option<String>,
    damage_count: usize,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, buf: 0, count: 0, padding: 0, at_marker: false, damage: None, damage_count: 0 }
    }

    /// Tops the bit buffer held in `buf` and `count` (at most 63 bits) up to at least 32 bits,
    /// often to 56 or more. While eight bytes without a 0xFF lie ahead (almost always), it
    /// adds as many whole bytes as fit without a branch on `count`, whose pattern no predictor
    /// learns ("variant 4" of Giesen's bit readers): the bits below `count` then hold the next
    /// byte's first bits, which a later top-up writes again unchanged.
    #[inline(always)]
    fn top_up(&mut self, buf: &mut u64, count: &mut u32) {
        if !self.at_marker
            && let Some(word) = self.data.get(self.pos..self.pos + 8)
        {
            let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            let inverted = !word;
            // Non-zero if any byte is 0xFF (exactly: the test for a zero byte, on `!word`).
            let has_ff = inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                *buf |= word >> *count;
                self.pos += ((63 - *count) >> 3) as usize;
                *count |= 56;
                return;
            }
        }
        if *count < 32 {
            (self.buf, self.count) = (*buf, *count);
            self.refill_bytewise();
            (*buf, *count) = (self.buf, self.count);
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_bytewise(&mut self) {
        // Whole bytes while they fit under 64 bits: `count` stays at most 63 (see `top_up`).
        while self.count <= 55 {
            let byte = if self.at_marker {
                self.padding += 8;
                0
            } else {
                match self.data.get(self.pos) {
                    Some(0xFF) => match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            self.pos += 2;
                            0xFF
                        }
                        _ => {
                            self.at_marker = true;
                            self.padding += 8;
                            0
                        }
                    },
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                    None => {
                        self.at_marker = true;
                        self.padding += 8;
                        0
                    }
                }
            };
            self.buf |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    /// Reads one Huffman symbol (for the coefficient decoder's scans).
    pub(super) fn symbol(&mut self, table: &HuffTable) -> Result<u8, String> {
        let (mut buf, mut count) = (self.buf, self.count);
        self.top_up(&mut buf, &mut count);
        let (value, len) = symbol(table, buf);
        (self.buf, self.count) = (buf << len, count - len);
        if len == INVALID_CODE {
            self.note_damage(|| "an invalid Huffman code".into());
        }
        Ok(value)
    }

    /// Reads `n` (at most 16) bits as an unsigned number.
    pub(super) fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let (mut buf, mut count) = (self.buf, self.count);
        self.top_up(&mut buf, &mut count);
        let value = (buf >> (64 - n)) as u32;
        (self.buf, self.count) = (buf << n, count - n);
        value
    }

    /// Reads `n` (at most 16) bits as a value of that size category (JPEG's `EXTEND`).
    pub(super) fn signed(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let (mut buf, mut count) = (self.buf, self.count);
        self.top_up(&mut buf, &mut count);
        let value = signed_bits(buf, n);
        (self.buf, self.count) = (buf << n, count - n);
        value
    }

    /// Whether decoding has read past the end of the data (into zeros fed after a marker).
    pub(super) fn overran(&self) -> bool {
        self.count < self.padding
    }

    /// Notes a sign of damage (the first is kept, all are counted).
    pub(super) fn note_damage(&mut self, what: impl FnOnce() -> String) {
        if self.damage.is_none() {
            self.damage = Some(what());
        }
        self.damage_count += 1;
    }

    /// What damage decoding met: the first sign and, after it, how many in all.
    pub(super) fn damage(&self) -> Option<String> {
        self.damage.as_ref().map(|first| match self.damage_count {
            1 => first.clone(),
            n => format!("{first} (and {} more signs of damage)", n - 1),
        })
    }

    /// Moves to restart marker `RST(index % 8)` as libjpeg does: bits left over and bytes
    /// before the marker are discarded, and a marker out of order is resynchronised
    /// ([`resync`]); each of these is noted as damage. Returns whether decoding resumes after
    /// the expected marker; else the reader stays at the marker it found and feeds zeros (the
    /// segment's blocks then read as libjpeg reads data it does not have).
    pub(super) fn restart(&mut self, index: usize) -> bool {
        let real = self.count.saturating_sub(self.padding);
        let (pos, resumed, note) = resync(self.data, self.pos, index, (real / 8) as usize);
        let (damage, damage_count) = (self.damage.take(), self.damage_count);
        *self = Self::new(self.data, pos);
        (self.damage, self.damage_count) = (damage, damage_count);
        if let Some(note) = note {
            self.note_damage(|| note);
        }
        resumed
    }

    /// Decodes one block: its DC difference (added to `pred`) and AC coefficients, dequantised
    /// by `quant` (zigzag order), into `coef` (natural order, which must be zero). Returns the
    /// zigzag index of the last coefficient read (0: DC only; a run of 16 zeros counts as read).
    /// The bit buffer is kept in locals (registers) between refills.
    #[inline(always)]
    pub(super) fn block(
        &mut self,
        dc: &HuffTable,
        ac: &HuffTable,
        pred: &mut i32,
        quant: &[i32; 64],
        coef: &mut [i32; 64],
    ) -> Result<usize, String> {
        self.dc_difference(dc, pred)?;
        coef[0] = dequantise(*pred, quant[0]);
        let (mut buf, mut count) = (self.buf, self.count);
        // Past 63, `k` means a run past the block's end: as in libjpeg (whose
        // `jpeg_natural_order` has 16 extra entries, all 63, for this), the coefficient goes to
        // the last place and the loop, which `k < 64` ends, ends the block. Encoders that do
        // this exist (Pillow's `hopper_bad_exif.jpg`), and PIL reads their files.
        let mut k = 1;
        while k < 64 {
            self.top_up(&mut buf, &mut count);
            let fast = ac.fast_ac[(buf >> (64 - FAST_BITS)) as usize];
            if fast != 0 {
                let used = (fast & 0xFF) as u32;
                buf <<= used;
                count -= used;
                let run = (fast >> 8) & 0xFF;
                if run == END_OF_BLOCK {
                    break;
                }
                k += run as usize;
                // A run of 16 zeros puts a zero at its last place: harmless (the last place
                // holds nothing yet: a write there ends the block).
                coef[ZIGZAG[k.min(63)]] = dequantise(fast >> 16, quant[k.min(63)]);
                k += 1;
                continue;
            }
            match long_code(ac, &mut buf, &mut count)? {
                Code::EndOfBlock => break,
                Code::Invalid => {
                    self.note_damage(|| "an invalid Huffman code".into());
                    break;
                }
                Code::SixteenZeros => k += 16,
                Code::Coefficient { run, value } => {
                    k += run;
                    coef[ZIGZAG[k.min(63)]] = dequantise(value, quant[k.min(63)]);
                    k += 1;
                }
            }
        }
        (self.buf, self.count) = (buf, count);
        Ok((k - 1).min(63))
    }

    /// Reads a block's DC difference and adds it to `pred`.
    #[inline(always)]
    fn dc_difference(&mut self, dc: &HuffTable, pred: &mut i32) -> Result<(), String> {
        // 32 bits hold the code and its value (16 bits at most each).
        let (mut buf, mut count) = (self.buf, self.count);
        self.top_up(&mut buf, &mut count);
        let (size, len) = symbol(dc, buf);
        if len == INVALID_CODE {
            self.note_damage(|| "an invalid Huffman code".into());
        }
        let size = u32::from(size);
        if size > 16 {
            return Err("a DC difference of more than 16 bits".into());
        }
        buf <<= len;
        *pred = pred.wrapping_add(signed_bits(buf, size));
        (self.buf, self.count) = (buf << size, count - len - size);
        Ok(())
    }

    /// Reads one block that is not needed: only its DC difference is kept (in `pred`). Several
    /// codes go per lookup (`skip_ac`) while they stay inside the block.
    #[inline(always)]
    pub(super) fn skip_block(&mut self, dc: &HuffTable, ac: &HuffTable, pred: &mut i32) -> Result<(), String> {
        self.dc_difference(dc, pred)?;
        let (mut buf, mut count) = (self.buf, self.count);
        let mut k = 1;
        while k < 64 {
            self.top_up(&mut buf, &mut count);
            let skip = ac.skip_ac[(buf >> (64 - FAST_BITS)) as usize];
            // Only while the codes stay inside this block (k ≤ 63 after them); else one code.
            if skip != 0 && k + ((skip >> 8) & 0xFF) as usize <= 63 {
                let used = skip & 0xFF;
                buf <<= used;
                count -= used;
                k += ((skip >> 8) & 0xFF) as usize;
                if skip >> 16 != 0 {
                    break; // end of block
                }
                continue;
            }
            match long_code(ac, &mut buf, &mut count)? {
                Code::EndOfBlock => break,
                Code::Invalid => {
                    self.note_damage(|| "an invalid Huffman code".into());
                    break;
                }
                Code::SixteenZeros => k += 16,
                Code::Coefficient { run, .. } => k += run + 1,
            }
        }
        (self.buf, self.count) = (buf, count);
        Ok(())
    }
}

/// One AC code read the long way (its code or value does not fit a table entry).
enum Code {
    EndOfBlock,
    /// Not a code of the table: an end of block, as libjpeg takes it, and damage.
    Invalid,
    SixteenZeros,
    Coefficient {
        run: usize,
        value: i32,
    },
}

/// Reads one AC code and its value from the bit buffer held in `buf` and `count` (at least 32
/// bits). Run-length symbols other than the two baseline ones end the block, as in libjpeg.
#[inline(always)]
fn long_code(ac: &HuffTable, buf: &mut u64, count: &mut u32) -> Result<Code, String> {
    let (rs, len) = symbol(ac, *buf);
    *buf <<= len;
    *count -= len;
    if len == INVALID_CODE {
        return Ok(Code::Invalid);
    }
    let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
    if size == 0 {
        return Ok(if run == 15 { Code::SixteenZeros } else { Code::EndOfBlock });
    }
    let value = signed_bits(*buf, size);
    *buf <<= size;
    *count -= size;
    Ok(Code::Coefficient { run, value })
}

/// The value whose `size` (≤ 16) bits are at the top of `buf`, sign-extended as JPEG's EXTEND
/// does, without branches (the sign is a coin toss for a branch predictor): a value whose
/// first bit is 0 is negative, `raw − (2^size − 1)`; `size` 0 is the value 0.
#[inline(always)]
fn signed_bits(buf: u64, size: u32) -> i32 {
    let raw = ((buf >> 32) >> (32 - size)) as i32;
    let negative = !((buf as i64 >> 63) as i32);
    raw + (negative & (1 - (1 << size)))
}

/// The "length" of an invalid code: libjpeg reads 17 bits looking for a code, warns
/// ("corrupt JPEG data: bad Huffman code") and takes the symbol 0 (a DC difference of 0, an end
/// of block), so decoding goes on as PIL's does.
pub(super) const INVALID_CODE: u32 = 17;

/// The Huffman symbol at the top of `buf` (which holds at least 17 bits) and its code length,
/// or symbol 0 and [`INVALID_CODE`] for a code the table does not have.
#[inline(always)]
fn symbol(table: &HuffTable, buf: u64) -> (u8, u32) {
    let entry = table.fast[(buf >> (64 - FAST_BITS)) as usize];
    if entry != 0 {
        return (entry as u8, u32::from(entry >> 8));
    }
    long_symbol(table, buf)
}

/// A code longer than `FAST_BITS`, by the canonical code's bounds per length.
#[cold]
fn long_symbol(table: &HuffTable, buf: u64) -> (u8, u32) {
    let top = (buf >> 48) as u32;
    let mut len = FAST_BITS as usize + 1;
    while top >= table.max_code[len] {
        len += 1;
    }
    if len > 16 {
        return (0, INVALID_CODE);
    }
    // libjpeg masks the index to the table (`& 0xFF`); a valid table never needs it.
    let index = ((top >> (16 - len)) as i32 + table.delta[len]) as usize;
    (table.values.get(index).copied().unwrap_or(0), len as u32)
}

/// Where decoding resumes at restart `index`, as libjpeg's `read_restart_marker` and
/// `jpeg_resync_to_restart` decide: from `pos` (where the reader stopped: at a marker's `FF`
/// or inside data it had not read; `stray` whole bytes were read past the last block), the next
/// marker is found; the expected `RSTn`, or one too far off to judge, is taken; one of the
/// previous two is skipped for the next marker; one of the next two, or any other marker, is
/// left in place (the segment then has no data). Returns the position to read from, whether
/// the expected marker was passed, and a note of the damage if the data was not in order.
pub(super) fn resync(data: &[u8], pos: usize, index: usize, stray: usize) -> (usize, bool, Option<String>) {
    let desired = (index % 8) as u8;
    let rst = |offset: u8| 0xD0 + ((desired + offset) & 7);
    let Some((mut marker, mut after)) = super::header::next_marker(data, pos) else {
        return (data.len(), false, Some(format!("the data ends before restart marker {desired}")));
    };
    let skipped = stray + (after - 2).saturating_sub(pos);
    let mut note = (skipped > 0).then(|| format!("{skipped} stray bytes before restart marker {desired}"));
    loop {
        let is_rst = (0xD0..=0xD7).contains(&marker);
        if marker == rst(0) {
            return (after, true, note);
        }
        note.get_or_insert_with(|| format!("restart marker {desired} missing (found marker 0x{marker:02X})"));
        if marker < 0xC0 || (is_rst && (marker == rst(7) || marker == rst(6))) {
            // An invalid marker, or an earlier restart: on to the next marker.
            match super::header::next_marker(data, after) {
                Some(next) => (marker, after) = next,
                None => return (data.len(), false, note),
            }
        } else if !is_rst || marker == rst(1) || marker == rst(2) {
            return (after - 2, false, note); // left for the next restart (or the scan's end)
        } else {
            return (after, true, note); // too far off to judge: taken as the expected one
        }
    }
}

/// A coefficient (stored as 16 bits, as libjpeg's `JCOEF`) times its quantiser. The inverse
/// DCTs wrap, so a corrupt file's huge products garble pixels but cannot panic.
#[inline(always)]
fn dequantise(value: i32, quant: i32) -> i32 {
    i32::from(value as i16).wrapping_mul(quant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bit_reader_returns_the_unstuffed_bits_in_order_at_any_read_sizes() {
        // Random entropy-coded data, one byte in four 0xFF (stuffed with 0x00), ending in a
        // marker; read back in random sizes of 1–16 bits through the branch-free top-up, which
        // leaves the next byte's first bits below the count and must not garble them.
        let mut next = super::super::xorshift(0x2545_F491_4F6C_DD1D);
        for round in 0..50 {
            let bytes: Vec<u8> =
                (0..200 + round * 7).map(|_| if next(4) == 0 { 0xFF } else { next(256) as u8 }).collect();
            let mut data = Vec::new();
            for &b in &bytes {
                data.push(b);
                if b == 0xFF {
                    data.push(0x00);
                }
            }
            data.extend_from_slice(&[0xFF, 0xD9]);
            let bit = |i: usize| bytes.get(i / 8).map_or(0, |b| (b >> (7 - i % 8)) & 1);
            let mut reader = BitReader::new(&data, 0);
            let (mut buf, mut count) = (0u64, 0u32);
            let mut at = 0usize;
            while at < bytes.len() * 8 + 40 {
                reader.top_up(&mut buf, &mut count);
                assert!((32..=63).contains(&count), "round {round}: {count} bits after a top-up");
                let n = 1 + next(16) as u32;
                let expected = (0..n as usize).fold(0u32, |v, i| (v << 1) | u32::from(bit(at + i)));
                assert_eq!((buf >> (64 - n)) as u32, expected, "round {round}: {n} bits at bit {at}");
                buf <<= n;
                count -= n;
                at += n as usize;
            }
            // Past the marker the reader feeds zeros and says so.
            (reader.buf, reader.count) = (buf, count);
            assert!(reader.overran(), "round {round}");
        }
    }
}
