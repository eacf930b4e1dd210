//! Arithmetic-coded entropy data (ITU T.81 annex D and F.1.4, F.2.4, G.1.3, G.2.3), decoded
//! as libjpeg-turbo's `jdarith.c` does: the adaptive binary decoder and the coding models of
//! sequential and progressive scans, into the coefficient buffers of `coefficients`.
//!
//! Where libjpeg warns of corrupt data ("spectral overflow", "magnitude overflow") and stops
//! decoding the scan (leaving the rest of its coefficients as they are), this returns an error:
//! the file is damaged.

use super::ZIGZAG;

/// `jpeg_aritab`: per state, `Qe << 16 | Next_Index_MPS << 8 | Switch_MPS << 7 |
/// Next_Index_LPS` (T.81 table D.2; the last entry is the fixed 0.5 estimate).
const QE_TABLE: [u32; 114] = [
    0x5a1d0181, 0x2586020e, 0x11140310, 0x80b0412, 0x3d80514, 0x1da0617, 0xe50719, 0x6f081c, 0x36091e, 0x1a0a21,
    0x0d0b23, 0x060c09, 0x030d0a, 0x010d0c, 0x5a7f0f8f, 0x3f251024, 0x2cf21126, 0x207c1227, 0x17b91328, 0x1182142a,
    0xcef152b, 0x9a1162d, 0x72f172e, 0x55c1830, 0x4061931, 0x3031a33, 0x2401b34, 0x1b11c36, 0x1441d38, 0xf51e39,
    0xb71f3b, 0x8a203c, 0x68213e, 0x4e223f, 0x3b2320, 0x2c0921, 0x5ae125a5, 0x484c2640, 0x3a0d2741, 0x2ef12843,
    0x261f2944, 0x1f332a45, 0x19a82b46, 0x15182c48, 0x11772d49, 0xe742e4a, 0xbfb2f4b, 0x9f8304d, 0x861314e, 0x706324f,
    0x5cd3330, 0x4de3432, 0x40f3532, 0x3633633, 0x2d43734, 0x25c3835, 0x1f83936, 0x1a43a37, 0x1603b38, 0x1253c39,
    0xf63d3a, 0xcb3e3b, 0xab3f3d, 0x8f203d, 0x5b1241c1, 0x4d044250, 0x412c4351, 0x37d84452, 0x2fe84553, 0x293c4654,
    0x23794756, 0x1edf4857, 0x1aa94957, 0x174e4a48, 0x14244b48, 0x119c4c4a, 0xf6b4d4a, 0xd514e4b, 0xbb64f4d, 0xa40304d,
    0x583251d0, 0x4d1c5258, 0x438e5359, 0x3bdd545a, 0x34ee555b, 0x2eae565c, 0x299a575d, 0x25164756, 0x557059d8,
    0x4ca95a5f, 0x44d95b60, 0x3e225c61, 0x38245d63, 0x32b45e63, 0x2e17565d, 0x56a860df, 0x4f466165, 0x47e56266,
    0x41cf6367, 0x3c3d6468, 0x375e5d63, 0x52316669, 0x4c0f676a, 0x4639686b, 0x415e6367, 0x56276ae9, 0x50e76b6c,
    0x4b85676d, 0x55976d6e, 0x504f6b6f, 0x5a106fee, 0x55226d70, 0x59eb6ff0, 0x5a1d7171,
];

/// Statistics bins per conditioning table: 64 for DC, 256 for AC (`jdarith.c`).
const DC_BINS: usize = 64;
const AC_BINS: usize = 256;

/// A DAC segment's conditioning values per table: DC's `L` and `U`, AC's `K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conditioning {
    pub(super) dc_l: [u8; 4],
    pub(super) dc_u: [u8; 4],
    pub(super) ac_k: [u8; 4],
}

impl Default for Conditioning {
    /// T.81's defaults: `L = 0`, `U = 1`, `K = 5`.
    fn default() -> Self {
        Self { dc_l: [0; 4], dc_u: [1; 4], ac_k: [5; 4] }
    }
}

impl Conditioning {
    /// Reads a DAC segment's entries into `self`.
    pub(super) fn read(&mut self, mut seg: &[u8]) -> Result<(), String> {
        while let [class_index, value, rest @ ..] = seg {
            let (class, index) = (class_index >> 4, usize::from(class_index & 15));
            if index > 3 || class > 1 {
                return Err(format!("an arithmetic conditioning table {class_index:#04x} that does not exist"));
            }
            if class == 0 {
                let (l, u) = (value & 15, value >> 4);
                if l > u {
                    return Err(format!("arithmetic DC conditioning L = {l} above U = {u}"));
                }
                (self.dc_l[index], self.dc_u[index]) = (l, u);
            } else {
                if !(1..=63).contains(value) {
                    return Err(format!("arithmetic AC conditioning K = {value} outside 1..=63"));
                }
                self.ac_k[index] = *value;
            }
            seg = rest;
        }
        if seg.is_empty() { Ok(()) } else { Err("a DAC segment with an odd byte at its end".into()) }
    }
}

/// The binary decoder's registers and its place in the data.
pub(super) struct ArithDecoder<'a> {
    data: &'a [u8],
    pub(super) pos: usize,
    c: u32,
    a: u32,
    ct: i32,
    /// A marker was met: zeros are fed from here on.
    at_marker: bool,
    /// The fixed-probability bin (sign and refinement bits).
    fixed_bin: u8,
}

impl<'a> ArithDecoder<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, c: 0, a: 0, ct: -16, at_marker: false, fixed_bin: 113 }
    }

    /// Starts again after a restart marker at `pos` (the byte after it).
    pub(super) fn reset(&mut self, pos: usize) {
        *self = Self::new(self.data, pos);
    }

    /// The whole file's bytes.
    pub(super) fn data(&self) -> &'a [u8] {
        self.data
    }

    fn byte(&mut self) -> u32 {
        if self.at_marker {
            return 0;
        }
        let Some(&byte) = self.data.get(self.pos) else {
            self.at_marker = true;
            return 0;
        };
        self.pos += 1;
        if byte != 0xFF {
            return u32::from(byte);
        }
        // Zero stuffing or a marker: FF fill bytes are swallowed.
        let mut next = self.data.get(self.pos).copied();
        while next == Some(0xFF) {
            self.pos += 1;
            next = self.data.get(self.pos).copied();
        }
        if next == Some(0) {
            self.pos += 1;
            0xFF
        } else {
            // Leave the marker for the scan's end or the restart: back to its first FF.
            self.pos -= 1;
            self.at_marker = true;
            0
        }
    }

    /// Decodes one binary decision with the adaptive estimate in `*st` (`arith_decode`).
    fn decode(&mut self, st: &mut u8) -> u32 {
        while self.a < 0x8000 {
            self.ct -= 1;
            if self.ct < 0 {
                let data = self.byte();
                self.c = (self.c << 8) | data;
                self.ct += 8;
                if self.ct < 0 {
                    self.ct += 1;
                    if self.ct == 0 {
                        self.a = 0x8000; // two initial bytes read: A becomes 0x10000 below
                    }
                }
            }
            self.a <<= 1;
        }
        let sv = u32::from(*st);
        let mut qe = QE_TABLE[(sv & 0x7F) as usize];
        let nl = qe & 0xFF;
        qe >>= 8;
        let nm = qe & 0xFF;
        qe >>= 8;
        let mut sv = sv;
        self.a = self.a.wrapping_sub(qe);
        let temp = self.a << self.ct;
        if self.c >= temp {
            self.c -= temp;
            if self.a < qe {
                self.a = qe;
                *st = ((sv & 0x80) ^ nm) as u8;
            } else {
                self.a = qe;
                *st = ((sv & 0x80) ^ nl) as u8;
                sv ^= 0x80;
            }
        } else if self.a < 0x8000 {
            if self.a < qe {
                *st = ((sv & 0x80) ^ nl) as u8;
                sv ^= 0x80;
            } else {
                *st = ((sv & 0x80) ^ nm) as u8;
            }
        }
        sv >> 7
    }

    fn decode_fixed(&mut self) -> u32 {
        let mut bin = self.fixed_bin;
        let bit = self.decode(&mut bin);
        self.fixed_bin = bin;
        bit
    }
}

/// The adaptive statistics of one scan: per table, DC and AC bins.
pub(super) struct Statistics {
    dc: [[u8; DC_BINS]; 4],
    ac: [[u8; AC_BINS]; 4],
}

impl Statistics {
    pub(super) fn new() -> Self {
        Self { dc: [[0; DC_BINS]; 4], ac: [[0; AC_BINS]; 4] }
    }
    pub(super) fn reset_dc(&mut self, table: usize) {
        self.dc[table] = [0; DC_BINS];
    }
    pub(super) fn reset_ac(&mut self, table: usize) {
        self.ac[table] = [0; AC_BINS];
    }
}

/// A component's DC state in a scan: its prediction and conditioning context.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DcState {
    pub(super) last: i32,
    pub(super) context: usize,
}

fn corrupt(what: &str) -> String {
    format!("corrupt arithmetic-coded data ({what})")
}

/// A DC difference (figures F.19–F.24), updating `state`; the difference's sum with the last
/// value, masked to 16 bits, becomes the new last value.
fn dc_value(dec: &mut ArithDecoder, bins: &mut [u8; DC_BINS], state: &mut DcState, l: u8, u: u8) -> Result<(), String> {
    let st = state.context;
    if dec.decode(&mut bins[st]) == 0 {
        state.context = 0;
        return Ok(());
    }
    let sign = dec.decode(&mut bins[st + 1]) as usize;
    let st = st + 2 + sign;
    // The magnitude category: its first decision at S0 + 2 + sign, the rest from X1 = 20.
    let mut m: i32 = dec.decode(&mut bins[st]) as i32;
    let mut st = st;
    if m != 0 {
        st = 20;
        while dec.decode(&mut bins[st]) != 0 {
            m <<= 1;
            if m == 0x8000 {
                return Err(corrupt("magnitude overflow"));
            }
            st += 1;
        }
    }
    state.context = if m < (1i32 << l) >> 1 {
        0
    } else if m > (1i32 << u) >> 1 {
        12 + sign * 4
    } else {
        4 + sign * 4
    };
    let v = magnitude(dec, bins, st + 14, m);
    state.last = (state.last + if sign != 0 { -v } else { v }) & 0xFFFF;
    Ok(())
}

/// A magnitude whose leading bit is `m` (a power of two, or 0): the bits below it, each
/// decoded with the bin at `st` (figure F.24's last loop), plus one.
fn magnitude(dec: &mut ArithDecoder, bins: &mut [u8], st: usize, mut m: i32) -> i32 {
    let mut v = m;
    while {
        m >>= 1;
        m != 0
    } {
        if dec.decode(&mut bins[st]) != 0 {
            v |= m;
        }
    }
    v + 1
}

/// One AC value at zigzag index `k` once its "non-zero" decision was made, its bins starting
/// at `st` (figures F.21–F.24).
fn ac_value(dec: &mut ArithDecoder, bins: &mut [u8; AC_BINS], st: usize, k: usize, kx: u8) -> Result<i32, String> {
    let sign = dec.decode_fixed();
    let st = st + 2;
    let mut m: i32 = dec.decode(&mut bins[st]) as i32;
    let mut st = st;
    if m != 0 && dec.decode(&mut bins[st]) != 0 {
        m <<= 1;
        st = if k <= usize::from(kx) { 189 } else { 217 };
        while dec.decode(&mut bins[st]) != 0 {
            m <<= 1;
            if m == 0x8000 {
                return Err(corrupt("magnitude overflow"));
            }
            st += 1;
        }
    }
    let v = magnitude(dec, bins, st + 14, m);
    Ok(if sign != 0 { -v } else { v })
}

/// AC coefficients `ss..=se` of a block (zigzag order), each shifted left by `al`, into
/// `block` (natural order): a sequential scan's (1..=63, `al` 0) or a progressive first scan's.
fn ac_values(
    dec: &mut ArithDecoder,
    bins: &mut [u8; AC_BINS],
    block: &mut [i16; 64],
    (ss, se, al): (usize, usize, u32),
    kx: u8,
) -> Result<(), String> {
    let mut k = ss;
    while k <= se {
        let mut st = 3 * (k - 1);
        if dec.decode(&mut bins[st]) != 0 {
            break; // end of block
        }
        while dec.decode(&mut bins[st + 1]) == 0 {
            st += 3;
            k += 1;
            if k > se {
                return Err(corrupt("spectral overflow"));
            }
        }
        let v = ac_value(dec, bins, st, k, kx)?;
        block[ZIGZAG[k]] = ((v as u32) << al) as i16;
        k += 1;
    }
    Ok(())
}

/// One block of a sequential scan: DC difference and AC coefficients.
#[allow(clippy::too_many_arguments)]
pub(super) fn sequential_block(
    dec: &mut ArithDecoder,
    stats: &mut Statistics,
    state: &mut DcState,
    (dc_table, ac_table): (usize, usize),
    cond: &Conditioning,
    block: &mut [i16; 64],
) -> Result<(), String> {
    dc_value(dec, &mut stats.dc[dc_table], state, cond.dc_l[dc_table], cond.dc_u[dc_table])?;
    block[0] = state.last as i16;
    ac_values(dec, &mut stats.ac[ac_table], block, (1, 63, 0), cond.ac_k[ac_table])
}

/// One block of a progressive DC first scan.
pub(super) fn dc_first_block(
    dec: &mut ArithDecoder,
    stats: &mut Statistics,
    state: &mut DcState,
    dc_table: usize,
    cond: &Conditioning,
    al: u32,
    block: &mut [i16; 64],
) -> Result<(), String> {
    dc_value(dec, &mut stats.dc[dc_table], state, cond.dc_l[dc_table], cond.dc_u[dc_table])?;
    block[0] = ((state.last as u32) << al) as i16;
    Ok(())
}

/// One block of a progressive DC refinement scan: the next bit of the DC value.
pub(super) fn dc_refine_block(dec: &mut ArithDecoder, al: u32, block: &mut [i16; 64]) {
    if dec.decode_fixed() != 0 {
        block[0] |= (1i32 << al) as i16;
    }
}

/// One block of a progressive AC first scan.
pub(super) fn ac_first_block(
    dec: &mut ArithDecoder,
    stats: &mut Statistics,
    ac_table: usize,
    cond: &Conditioning,
    band: (usize, usize, u32),
    block: &mut [i16; 64],
) -> Result<(), String> {
    ac_values(dec, &mut stats.ac[ac_table], block, band, cond.ac_k[ac_table])
}

/// One block of a progressive AC refinement scan (figure G.10 and `decode_mcu_AC_refine`).
pub(super) fn ac_refine_block(
    dec: &mut ArithDecoder,
    stats: &mut Statistics,
    ac_table: usize,
    (ss, se, al): (usize, usize, u32),
    block: &mut [i16; 64],
) -> Result<(), String> {
    let bins = &mut stats.ac[ac_table];
    let (p1, m1) = ((1i32 << al) as i16, ((-1i32) << al) as i16);
    // The previous stage's end of block.
    let mut kex = se;
    while kex > 0 && block[ZIGZAG[kex]] == 0 {
        kex -= 1;
    }
    let mut k = ss;
    while k <= se {
        let mut st = 3 * (k - 1);
        if k > kex && dec.decode(&mut bins[st]) != 0 {
            break; // end of block
        }
        loop {
            let coef = &mut block[ZIGZAG[k]];
            if *coef != 0 {
                if dec.decode(&mut bins[st + 2]) != 0 {
                    *coef = if *coef < 0 { coef.wrapping_add(m1) } else { coef.wrapping_add(p1) };
                }
                break;
            }
            if dec.decode(&mut bins[st + 1]) != 0 {
                *coef = if dec.decode_fixed() != 0 { m1 } else { p1 };
                break;
            }
            st += 3;
            k += 1;
            if k > se {
                return Err(corrupt("spectral overflow"));
            }
        }
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probability_table_is_t81s() {
        // Spot checks against T.81 table D.2: state 0, the 0.5 state 113 and its neighbours.
        assert_eq!(QE_TABLE[0], 0x5a1d << 16 | 1 << 8 | 1 << 7 | 1);
        assert_eq!(QE_TABLE[113] >> 16, 0x5a1d);
        assert_eq!(QE_TABLE[112] >> 16, 0x59eb);
        assert_eq!(QE_TABLE.len(), 114);
    }

    #[test]
    fn conditioning_segments_are_checked() {
        let mut c = Conditioning::default();
        c.read(&[0x01, 0x52, 0x11, 0x07]).unwrap();
        assert_eq!((c.dc_l[1], c.dc_u[1], c.ac_k[1]), (2, 5, 7));
        assert!(c.read(&[0x00, 0x15]).is_err(), "L above U");
        assert!(c.read(&[0x10, 0]).is_err(), "K of 0");
        assert!(c.read(&[0x05, 0x10]).is_err(), "table 5");
        assert!(c.read(&[0x00]).is_err(), "odd length");
    }
}
