//! The JPEGs the streaming decoder leaves aside, decoded as libjpeg does when a file has
//! several scans: every scan's entropy-coded data into per-component coefficient buffers
//! first, then the same inverse DCT, upsampling and colour conversion as the streaming
//! decoder's (so the pixels are libjpeg-turbo's, i.e. PIL's).
//!
//! It reads 8-bit JPEGs that are
//! - progressive (spectral selection and successive approximation, `jdphuff.c`), Huffman- or
//!   arithmetic-coded (`jdarith.c`, in `arithmetic`);
//! - sequential with several scans (components coded one after another), or arithmetic-coded;
//! - any integral chroma sampling (4:1:1, 4:4:0, ...), upsampled as libjpeg-turbo does;
//! - RGB, CMYK and YCCK (Adobe), converted to RGB as PIL's `convert("RGB")` does.
//!
//! 12-bit, lossless and hierarchical files get `Ok(None)`: PIL reads none of them either.
//!
//! Not done: libjpeg-turbo's block smoothing of progressive files whose scans leave the first
//! nine AC coefficients incomplete (no encoder we know of writes such files; a complete file is
//! not smoothed). Damaged data is decoded as libjpeg decodes it, and noted (see the
//! `jpeg` module docs).
//!
//! Memory: the coefficient buffers hold 128 bytes per 8 × 8 block of each component, and are
//! bounded by the file's length ([`MAX_COEFFICIENT_BYTES_PER_FILE_BYTE`]), so that a small file
//! whose header claims a huge image is refused before anything is allocated.

use std::rc::Rc;

use super::arithmetic::{self, ArithDecoder, Conditioning, DcState, Statistics};
use super::entropy::{BitReader, HuffTable};
use super::header::{self, Color};
use super::{Layout, MAX_SIDE, RegionImage, ZIGZAG};

/// Coefficient memory allowed per byte of file, beyond [`MIN_COEFFICIENT_BUDGET`]: a
/// progressive photo needs about 50 (2 bytes per coefficient at 1–3 bits per pixel); an
/// arithmetic-coded flat image far more, hence the generous figure.
pub(super) const MAX_COEFFICIENT_BYTES_PER_FILE_BYTE: usize = 4096;

/// Coefficient memory any file may use (a 16-megapixel 4:2:0 image needs 48 MiB).
const MIN_COEFFICIENT_BUDGET: usize = 64 << 20;

/// One component of the frame and its coefficients.
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_index: usize,
    /// The quantisation table (natural order), latched at the component's first scan.
    quant: Option<[i32; 64]>,
    /// Blocks per row and column the buffer holds (padded to whole MCUs).
    stride: usize,
    rows: usize,
    /// Blocks that hold image data (what a scan of this component alone codes).
    blocks_w: usize,
    blocks_h: usize,
    /// 64 coefficients per block, natural order, not dequantised.
    coefs: Vec<[i16; 64]>,
    /// Per coefficient, the successive-approximation bit of the last scan that coded it (-1:
    /// none yet), to check progressions as libjpeg does.
    coef_bits: [i32; 64],
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    arithmetic: bool,
    components: Vec<Component>,
    mcus_x: usize,
    mcus_y: usize,
}

/// What the markers before a scan have set.
struct Tables {
    quant: [Option<[i32; 64]>; 4],
    dc: [Option<Rc<HuffTable>>; 4],
    ac: [Option<Rc<HuffTable>>; 4],
    conditioning: Conditioning,
    restart_interval: usize,
}

/// One scan's header.
struct Scan {
    /// Frame component indices, in the scan's order, with their DC and AC table numbers.
    components: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

/// Decodes the pixels of `region` (full-resolution, end exclusive) of the JPEG `bytes` at
/// `1 / scale`. `Ok(None)`: a kind of JPEG no decoder here reads (12-bit, lossless).
pub(super) fn decode_region(
    bytes: &[u8],
    region: (u32, u32, u32, u32),
    scale: u32,
) -> Result<Option<RegionImage>, String> {
    let Some((frame, color, damage)) = read(bytes)? else {
        return Ok(None);
    };
    let samplings: Vec<(usize, usize)> = frame.components.iter().map(|c| (c.h, c.v)).collect();
    let (layout, mut planes) = Layout::new(frame.width, frame.height, &samplings, region, scale)?;
    let mut coef = [0i32; 64];
    for (plane, component) in planes.iter_mut().zip(&frame.components) {
        let quant = component.quant.unwrap_or([0; 64]);
        let size = plane.idct.size();
        for by in layout.my.0 * component.v..(layout.my.1 + 1) * component.v {
            for bx in layout.mx.0 * component.h..(layout.mx.1 + 1) * component.h {
                let block = &component.coefs[by * component.stride + bx];
                let mut last = 0;
                for (k, &natural) in ZIGZAG.iter().enumerate() {
                    let value = i32::from(block[natural]);
                    coef[natural] = value.wrapping_mul(quant[natural]);
                    if value != 0 {
                        last = k;
                    }
                }
                let y = (by - layout.my.0 * component.v) * size;
                let x = (bx - layout.mx.0 * component.h) * size;
                let stride = plane.width;
                plane.idct.run(&coef, last, &mut plane.data[y * stride + x..], stride);
            }
        }
    }
    Ok(Some(layout.finish(planes, color, Ok(damage))?))
}

/// Reads every scan of `bytes` into coefficients.
fn read(bytes: &[u8]) -> Result<Option<(Frame, Color, Option<String>)>, String> {
    let mut tables = Tables {
        quant: [None; 4],
        dc: [const { None }; 4],
        ac: [const { None }; 4],
        conditioning: Conditioning::default(),
        restart_interval: 0,
    };
    let mut markers = header::ColorMarkers::default();
    let mut frame: Option<Frame> = None;
    let mut scans = 0usize;
    let mut damage = Damage::default();
    let mut pos = 2;
    loop {
        let (marker, after) = header::next_marker(bytes, pos).ok_or(if scans == 0 {
            "the file ends inside its headers"
        } else {
            "the file ends before its end-of-image marker (truncated file)"
        })?;
        pos = after;
        match marker {
            0xD9 => break,
            0xD8 => return Err("a second start-of-image marker".into()),
            0x01 | 0xD0..=0xD7 => continue, // stray markers without a segment: libjpeg ignores them
            _ => {}
        }
        let len = header::u16_at(bytes, pos).ok_or("the file ends inside a marker segment")?;
        if len < 2 || pos + len > bytes.len() {
            return Err(format!("marker 0x{marker:02X} at byte {} runs past the end of the file", pos - 2));
        }
        let seg = &bytes[pos + 2..pos + len];
        pos += len;
        match marker {
            0xC0..=0xC2 | 0xC9 | 0xCA => {
                if frame.is_some() {
                    return Err("two frame headers".into());
                }
                let Some(f) = read_frame(seg, marker, bytes.len())? else {
                    return Ok(None);
                };
                frame = Some(f);
            }
            0xC3 | 0xC5..=0xC7 | 0xCB | 0xCD..=0xCF => return Ok(None), // lossless or hierarchical
            0xC4 => header::read_huffman(seg, &mut tables.dc, &mut tables.ac)?,
            0xDB => header::read_quant(seg, &mut tables.quant)?,
            0xCC => tables.conditioning.read(seg)?,
            0xDD => tables.restart_interval = header::u16_at(seg, 0).ok_or("malformed restart interval")?,
            0xDA => {
                let frame = frame.as_mut().ok_or("a scan before the frame header")?;
                let scan = read_scan(seg, frame)?;
                pos = decode_scan(bytes, pos, frame, &scan, &tables, &mut damage)
                    .map_err(|e| format!("{e} (scan {})", scans + 1))?;
                scans += 1;
            }
            _ => markers.note(marker, seg),
        }
    }
    let frame = frame.ok_or("no frame header before the end of the image")?;
    if scans == 0 {
        return Err("the file ends (EOI) before any image data".into());
    }
    let Some(color) = markers.color(frame.components.iter().map(|c| c.id).collect::<Vec<_>>().as_slice()) else {
        return Ok(None);
    };
    Ok(Some((frame, color, damage.summary())))
}

/// Damage met across scans: the first sign, and how many.
#[derive(Default)]
struct Damage {
    first: Option<String>,
    count: usize,
}

impl Damage {
    fn note(&mut self, what: String, count: usize) {
        if count > 0 {
            self.first.get_or_insert(what);
            self.count += count;
        }
    }

    fn summary(&self) -> Option<String> {
        self.first.as_ref().map(|first| match self.count {
            1 => first.clone(),
            n => format!("{first} (and {} more signs of damage)", n - 1),
        })
    }
}

fn read_frame(seg: &[u8], marker: u8, file_len: usize) -> Result<Option<Frame>, String> {
    if seg.len() < 6 {
        return Err("short frame header".into());
    }
    if seg[0] != 8 {
        return Ok(None); // 12-bit: not read here (nor by PIL)
    }
    let (height, width, n) =
        (header::u16_at(seg, 1).unwrap_or(0), header::u16_at(seg, 3).unwrap_or(0), usize::from(seg[5]));
    if height == 0 || width == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Ok(None); // no size (DNL) or over the limits: the general decoder names it
    }
    if n == 0 || seg.len() < 6 + 3 * n {
        return Err("short frame header".into());
    }
    if !matches!(n, 1 | 3 | 4) {
        return Ok(None); // two or five+ components: no colour space PIL reads
    }
    let mut components: Vec<Component> = (0..n)
        .map(|i| {
            let c = &seg[6 + 3 * i..9 + 3 * i];
            Component {
                id: c[0],
                h: usize::from(c[1] >> 4),
                v: usize::from(c[1] & 15),
                quant_index: usize::from(c[2]),
                quant: None,
                stride: 0,
                rows: 0,
                blocks_w: 0,
                blocks_h: 0,
                coefs: Vec::new(),
                coef_bits: [-1; 64],
            }
        })
        .collect();
    for c in &components {
        if !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v) {
            return Err(format!("component {} has sampling factors {}×{} (1 to 4 are allowed)", c.id, c.h, c.v));
        }
        if c.quant_index > 3 {
            return Err(format!("component {} names quantisation table {}", c.id, c.quant_index));
        }
    }
    if n == 1 {
        // One component is coded block by block, whatever its sampling factors say.
        components[0].h = 1;
        components[0].v = 1;
    }
    let max_h = components.iter().map(|c| c.h).max().unwrap_or(1);
    let max_v = components.iter().map(|c| c.v).max().unwrap_or(1);
    for c in &components {
        if max_h % c.h != 0 || max_v % c.v != 0 {
            return Err(format!(
                "component {} is sampled {}×{} against {max_h}×{max_v}: a fractional ratio (libjpeg refuses it too)",
                c.id, c.h, c.v
            ));
        }
    }
    let (mcus_x, mcus_y) = (width.div_ceil(8 * max_h), height.div_ceil(8 * max_v));
    let blocks: usize = components.iter().map(|c| mcus_x * c.h * mcus_y * c.v).sum();
    let budget = MIN_COEFFICIENT_BUDGET.max(file_len.saturating_mul(MAX_COEFFICIENT_BYTES_PER_FILE_BYTE));
    if blocks.saturating_mul(128) > budget {
        return Err(format!(
            "the headers claim {width} × {height} pixels, whose coefficients need {} MiB; a file of {file_len} bytes may use {} MiB",
            (blocks * 128) >> 20,
            budget >> 20
        ));
    }
    for c in &mut components {
        c.stride = mcus_x * c.h;
        c.rows = mcus_y * c.v;
        c.blocks_w = (width * c.h).div_ceil(max_h).div_ceil(8);
        c.blocks_h = (height * c.v).div_ceil(max_v).div_ceil(8);
        c.coefs = vec![[0; 64]; c.stride * c.rows];
    }
    Ok(Some(Frame {
        width,
        height,
        progressive: matches!(marker, 0xC2 | 0xCA),
        arithmetic: matches!(marker, 0xC9 | 0xCA),
        components,
        mcus_x,
        mcus_y,
    }))
}

fn read_scan(seg: &[u8], frame: &mut Frame) -> Result<Scan, String> {
    let n = usize::from(*seg.first().ok_or("malformed scan header")?);
    if !(1..=4).contains(&n) || seg.len() < 4 + 2 * n {
        return Err("malformed scan header".into());
    }
    let mut components = Vec::with_capacity(n);
    for i in 0..n {
        let (id, tables) = (seg[1 + 2 * i], seg[2 + 2 * i]);
        let index = frame.components.iter().position(|c| c.id == id).ok_or("a scan names an unknown component")?;
        if components.iter().any(|&(c, _, _)| c == index) {
            return Err(format!("a scan names component {id} twice"));
        }
        let (dc, ac) = (usize::from(tables >> 4), usize::from(tables & 15));
        if dc > 3 || ac > 3 {
            return Err(format!("a scan names table {dc}/{ac} (0 to 3 exist)"));
        }
        components.push((index, dc, ac));
    }
    let tail = &seg[1 + 2 * n..];
    let (ss, se, ah, al) =
        (usize::from(tail[0]), usize::from(tail[1]), u32::from(tail[2] >> 4), u32::from(tail[2] & 15));
    if n > 1 {
        let blocks: usize = components.iter().map(|&(c, _, _)| frame.components[c].h * frame.components[c].v).sum();
        if blocks > 10 {
            return Err(format!("an MCU of {blocks} blocks (at most 10 are allowed)"));
        }
    }
    if !frame.progressive {
        // A sequential scan codes every coefficient whatever it says (libjpeg warns, goes on).
        return Ok(Scan { components, ss: 0, se: 63, ah: 0, al: 0 });
    }
    // `start_pass_phuff_decoder`'s checks.
    let band_bad = if ss == 0 { se != 0 } else { ss > se || se > 63 || n != 1 };
    let bad = band_bad || (ah != 0 && al + 1 != ah) || al > 13;
    if bad {
        return Err(format!("an invalid progressive scan (Ss {ss}, Se {se}, Ah {ah}, Al {al})"));
    }
    for &(c, _, _) in &components {
        let bits = &mut frame.components[c].coef_bits;
        if ss > 0 && bits[0] < 0 {
            return Err("an AC scan before the component's first DC scan".into());
        }
        for b in &mut bits[ss..=se] {
            let expected = (*b).max(0) as u32;
            if ah != expected {
                return Err(format!("a refinement scan of bit {al} out of order (Ss {ss}, Se {se}, Ah {ah})"));
            }
            *b = al as i32;
        }
    }
    Ok(Scan { components, ss, se, ah, al })
}

/// The entropy decoder of one scan.
enum Entropy<'a> {
    Huffman(BitReader<'a>),
    Arithmetic(ArithDecoder<'a>, Box<Statistics>),
}

/// Decodes the scan whose entropy-coded data starts at `start`; returns where its data ends
/// (the next marker). Damage is decoded as libjpeg decodes it and noted in `damage`.
fn decode_scan(
    bytes: &[u8],
    start: usize,
    frame: &mut Frame,
    scan: &Scan,
    tables: &Tables,
    damage: &mut Damage,
) -> Result<usize, String> {
    // The scan's tables, checked before any data is read.
    let dc_first = scan.ss == 0 && scan.ah == 0;
    for &(c, dc, ac) in &scan.components {
        let component = &mut frame.components[c];
        if component.quant.is_none() {
            let table = tables.quant[component.quant_index].ok_or("a missing quantisation table")?;
            component.quant = Some(std::array::from_fn(|natural| {
                table[ZIGZAG.iter().position(|&z| z == natural).expect("a permutation")]
            }));
        }
        if !frame.arithmetic {
            let needs_dc = !frame.progressive || dc_first;
            let needs_ac = !frame.progressive || scan.ss > 0;
            if (needs_dc && tables.dc[dc].is_none()) || (needs_ac && tables.ac[ac].is_none()) {
                return Err("a missing Huffman table".into());
            }
        }
    }
    let mut entropy = if frame.arithmetic {
        let mut stats = Box::new(Statistics::new());
        reset_statistics(&mut stats, frame, scan);
        Entropy::Arithmetic(ArithDecoder::new(bytes, start), stats)
    } else {
        Entropy::Huffman(BitReader::new(bytes, start))
    };
    let mut dc = vec![DcState::default(); scan.components.len()];
    let mut eob_run = 0u32;
    let (units_x, units_y) = if scan.components.len() == 1 {
        let c = &frame.components[scan.components[0].0];
        (c.blocks_w, c.blocks_h)
    } else {
        (frame.mcus_x, frame.mcus_y)
    };
    let mut restarts = 0usize;
    // Until the next restart, blocks are left as they are: libjpeg's `insufficient_data`
    // (Huffman data that ran out) or its `ct = -1` (arithmetic data that made no sense).
    let mut skipping = false;
    for unit in 0..units_x * units_y {
        if tables.restart_interval > 0 && unit > 0 && unit % tables.restart_interval == 0 {
            if restart(&mut entropy, restarts, frame, scan, damage) {
                skipping = false;
            }
            restarts += 1;
            dc.fill(DcState::default());
            eob_run = 0;
        }
        if skipping {
            continue;
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        'unit: for (i, &(c, dc_table, ac_table)) in scan.components.iter().enumerate() {
            let component = &mut frame.components[c];
            let (h, v) = if scan.components.len() == 1 { (1, 1) } else { (component.h, component.v) };
            for by in 0..v {
                for bx in 0..h {
                    let block = &mut component.coefs[(uy * v + by) * component.stride + ux * h + bx];
                    match &mut entropy {
                        Entropy::Huffman(bits) => {
                            let dc_tbl = tables.dc[dc_table].as_deref();
                            let ac_tbl = tables.ac[ac_table].as_deref();
                            huffman_block(
                                bits,
                                frame.progressive,
                                scan,
                                (dc_tbl, ac_tbl),
                                &mut dc[i],
                                &mut eob_run,
                                block,
                            )?
                        }
                        Entropy::Arithmetic(dec, stats) => {
                            let decoded = arithmetic_block(
                                dec,
                                stats,
                                frame.progressive,
                                scan,
                                (dc_table, ac_table),
                                tables,
                                &mut dc[i],
                                block,
                            );
                            if let Err(e) = decoded {
                                damage.note(format!("{e}, in block {unit} of component {}", component.id), 1);
                                skipping = true;
                                break 'unit;
                            }
                        }
                    }
                }
            }
        }
        if let Entropy::Huffman(bits) = &entropy
            && bits.overran()
        {
            skipping = true;
            damage.note(format!("the entropy-coded data ends early, at unit {unit} of {}", units_x * units_y), 1);
        }
    }
    if let Entropy::Huffman(bits) = &entropy
        && let Some(what) = bits.damage()
    {
        damage.note(what, 1);
    }
    Ok(scan_end(bytes, start))
}

fn reset_statistics(stats: &mut Statistics, frame: &Frame, scan: &Scan) {
    for &(_, dc, ac) in &scan.components {
        if !frame.progressive || (scan.ss == 0 && scan.ah == 0) {
            stats.reset_dc(dc);
        }
        if !frame.progressive || scan.ss > 0 {
            stats.reset_ac(ac);
        }
    }
}

/// Moves past restart marker `RST(index % 8)` as libjpeg does; whether decoding resumes there.
fn restart(entropy: &mut Entropy, index: usize, frame: &Frame, scan: &Scan, damage: &mut Damage) -> bool {
    match entropy {
        Entropy::Huffman(bits) => bits.restart(index),
        Entropy::Arithmetic(dec, stats) => {
            // The decoder reads ahead: whatever lies before the marker is skipped unnoted.
            let (pos, _, note) = super::entropy::resync(dec.data(), dec.pos, index, 0);
            if let Some(note) = note.filter(|n| !n.contains("stray bytes")) {
                damage.note(note, 1);
            }
            // libjpeg resets the decoder whatever it found: it decodes on (from zeros if at a
            // marker).
            dec.reset(pos);
            reset_statistics(stats, frame, scan);
            true
        }
    }
}

/// One block of a Huffman-coded scan (`jdhuff.c`'s `decode_mcu`, `jdphuff.c`'s four).
fn huffman_block(
    bits: &mut BitReader,
    progressive: bool,
    scan: &Scan,
    (dc, ac): (Option<&HuffTable>, Option<&HuffTable>),
    state: &mut DcState,
    eob_run: &mut u32,
    block: &mut [i16; 64],
) -> Result<(), String> {
    fn table(t: Option<&HuffTable>) -> Result<&HuffTable, String> {
        t.ok_or_else(|| "a missing Huffman table".to_string())
    }
    let dc_difference = |bits: &mut BitReader, state: &mut DcState| -> Result<(), String> {
        let size = u32::from(bits.symbol(table(dc)?)?);
        if size > 16 {
            return Err("a DC difference of more than 16 bits".into());
        }
        state.last = state.last.wrapping_add(bits.signed(size));
        Ok(())
    };
    if !progressive {
        dc_difference(bits, state)?;
        block[0] = state.last as i16;
        let ac = table(ac)?;
        let mut k = 1;
        while k < 64 {
            let rs = bits.symbol(ac)?;
            let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            // Past 63 (a corrupt run), libjpeg's extra natural-order entries put it at 63.
            block[ZIGZAG[k.min(63)]] = bits.signed(size) as i16;
            k += 1;
        }
        return Ok(());
    }
    let (ss, se, ah, al) = (scan.ss, scan.se, scan.ah, scan.al);
    if ss == 0 {
        if ah == 0 {
            dc_difference(bits, state)?;
            block[0] = (state.last.wrapping_shl(al)) as i16;
        } else if bits.bits(1) != 0 {
            block[0] |= (1i32 << al) as i16;
        }
        return Ok(());
    }
    let ac = table(ac)?;
    if ah == 0 {
        // AC first (`decode_mcu_AC_first`).
        if *eob_run > 0 {
            *eob_run -= 1;
            return Ok(());
        }
        let mut k = ss;
        while k <= se {
            let rs = bits.symbol(ac)?;
            let (run, size) = (u32::from(rs >> 4), u32::from(rs & 15));
            if size != 0 {
                k += run as usize;
                let value = bits.signed(size);
                block[ZIGZAG[k.min(63)]] = value.wrapping_shl(al) as i16;
            } else if run == 15 {
                k += 15;
            } else {
                *eob_run = (1 << run) + bits.bits(run) - 1;
                break;
            }
            k += 1;
        }
        return Ok(());
    }
    // AC refinement (`decode_mcu_AC_refine`).
    let (p1, m1) = ((1i32 << al) as i16, ((-1i32) << al) as i16);
    let mut k = ss;
    let refine = |bits: &mut BitReader, coef: &mut i16| {
        if bits.bits(1) != 0 && (*coef & p1) == 0 {
            *coef = if *coef >= 0 { coef.wrapping_add(p1) } else { coef.wrapping_add(m1) };
        }
    };
    if *eob_run == 0 {
        while k <= se {
            let rs = bits.symbol(ac)?;
            let (mut run, size) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i16;
            if size != 0 {
                // A new coefficient's size is always 1 (libjpeg warns otherwise and goes on).
                value = if bits.bits(1) != 0 { p1 } else { m1 };
            } else if run != 15 {
                *eob_run = (1 << run) + bits.bits(run as u32);
                break;
            }
            while k <= se {
                let coef = &mut block[ZIGZAG[k]];
                if *coef != 0 {
                    refine(bits, coef);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[ZIGZAG[k.min(63)]] = value;
            }
            k += 1;
        }
    }
    if *eob_run > 0 {
        while k <= se {
            let coef = &mut block[ZIGZAG[k]];
            if *coef != 0 {
                refine(bits, coef);
            }
            k += 1;
        }
        *eob_run -= 1;
    }
    Ok(())
}

/// One block of an arithmetic-coded scan.
#[allow(clippy::too_many_arguments)]
fn arithmetic_block(
    dec: &mut ArithDecoder,
    stats: &mut Statistics,
    progressive: bool,
    scan: &Scan,
    (dc_table, ac_table): (usize, usize),
    tables: &Tables,
    state: &mut DcState,
    block: &mut [i16; 64],
) -> Result<(), String> {
    let cond = &tables.conditioning;
    if !progressive {
        return arithmetic::sequential_block(dec, stats, state, (dc_table, ac_table), cond, block);
    }
    match (scan.ss, scan.ah) {
        (0, 0) => arithmetic::dc_first_block(dec, stats, state, dc_table, cond, scan.al, block),
        (0, _) => {
            arithmetic::dc_refine_block(dec, scan.al, block);
            Ok(())
        }
        (_, 0) => arithmetic::ac_first_block(dec, stats, ac_table, cond, (scan.ss, scan.se, scan.al), block),
        _ => arithmetic::ac_refine_block(dec, stats, ac_table, (scan.ss, scan.se, scan.al), block),
    }
}

/// Where the entropy-coded data that starts at `start` ends: the first marker that is neither
/// a stuffed `FF 00` nor a restart.
fn scan_end(bytes: &[u8], mut pos: usize) -> usize {
    loop {
        let Some(at) = memchr::memchr(0xFF, &bytes[pos.min(bytes.len())..]) else {
            return bytes.len();
        };
        pos += at;
        match bytes.get(pos + 1) {
            Some(0x00 | 0xD0..=0xD7) => pos += 2,
            Some(0xFF) => pos += 1,
            _ => return pos,
        }
    }
}
