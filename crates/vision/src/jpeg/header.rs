//! The markers before the first scan of a JPEG: what the region decoder needs to know, and
//! whether the file is of the kind it decodes (baseline or extended Huffman, 8-bit, one
//! interleaved scan, grayscale or YCbCr with 4:4:4, 4:2:2 or 4:2:0 chroma).

use std::rc::Rc;

use super::entropy::HuffTable;

/// One colour component of the frame.
#[derive(Debug, Clone)]
pub(super) struct Component {
    pub(super) id: u8,
    /// Horizontal and vertical sampling factors.
    pub(super) h: usize,
    pub(super) v: usize,
    /// Quantisation table, in zigzag order (the order coefficients arrive in).
    pub(super) quant_zigzag: [i32; 64],
    quant_index: usize,
    pub(super) dc_table: usize,
    pub(super) ac_table: usize,
}

/// What the headers say, up to the first byte of entropy-coded data.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) components: Vec<Component>,
    pub(super) dc_tables: Vec<Option<Rc<HuffTable>>>,
    pub(super) ac_tables: Vec<Option<Rc<HuffTable>>>,
    /// MCUs between restart markers; 0 when there are none.
    pub(super) restart_interval: usize,
    /// Offset of the scan's entropy-coded data.
    pub(super) scan_start: usize,
    /// Grayscale or YCbCr: the two this decoder reads.
    pub(super) color: Color,
}

/// How a frame's components are to be read, as libjpeg decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Color {
    Gray,
    YCbCr,
    Rgb,
    /// Four components as PIL reads them ("CMYK;I": Adobe's inverted CMYK), converted to RGB
    /// as its `convert("RGB")` does.
    Cmyk,
    /// Adobe's YCCK: YCbCr to RGB, inverted, is CMY; K passes through; then as [`Color::Cmyk`].
    Ycck,
}

/// The markers libjpeg guesses a frame's colour space from: a JFIF APP0, an Adobe APP14.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ColorMarkers {
    jfif: bool,
    adobe_transform: Option<u8>,
}

impl ColorMarkers {
    /// Notes an APPn segment (`seg` without its length); others are ignored. Short segments
    /// are ignored as libjpeg ignores them (`examine_app0`, `examine_app14`).
    pub(super) fn note(&mut self, marker: u8, seg: &[u8]) {
        match marker {
            0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => self.jfif = true,
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => self.adobe_transform = Some(seg[11]),
            _ => {}
        }
    }

    /// The colour space of a frame whose components have the identifiers `ids`, as
    /// libjpeg's `default_decompress_parms` guesses it; `None` for two or five or more.
    pub(super) fn color(&self, ids: &[u8]) -> Option<Color> {
        match ids.len() {
            1 => Some(Color::Gray),
            3 if self.jfif => Some(Color::YCbCr),
            3 => Some(match self.adobe_transform {
                Some(0) => Color::Rgb,
                Some(_) => Color::YCbCr,
                None if ids == b"RGB" => Color::Rgb,
                None => Color::YCbCr,
            }),
            4 => Some(if self.adobe_transform == Some(0) || self.adobe_transform.is_none() {
                Color::Cmyk
            } else {
                Color::Ycck
            }),
            _ => None,
        }
    }
}

/// Reads a DHT segment's tables into `dc` and `ac`.
pub(super) fn read_huffman(
    seg: &[u8],
    dc: &mut [Option<Rc<HuffTable>>; 4],
    ac: &mut [Option<Rc<HuffTable>>; 4],
) -> Result<(), String> {
    let mut rest = seg;
    while !rest.is_empty() {
        let (class, index) = (rest[0] >> 4, usize::from(rest[0] & 15));
        if rest.len() < 17 || index > 3 || class > 1 {
            return Err("malformed Huffman table".into());
        }
        let counts: [u8; 16] = rest[1..17].try_into().expect("16 bytes");
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if rest.len() < 17 + total {
            return Err("malformed Huffman table".into());
        }
        let table = cached_table(&rest[..17 + total], class == 1)?;
        if class == 0 {
            dc[index] = Some(table);
        } else {
            ac[index] = Some(table);
        }
        rest = &rest[17 + total..];
    }
    Ok(())
}

/// Reads a DQT segment's tables (zigzag order, as stored) into `quant`.
pub(super) fn read_quant(seg: &[u8], quant: &mut [Option<[i32; 64]>; 4]) -> Result<(), String> {
    let mut rest = seg;
    while !rest.is_empty() {
        let (precision, index) = (rest[0] >> 4, usize::from(rest[0] & 15));
        let size = if precision == 0 { 64 } else { 128 };
        if index > 3 || precision > 1 || rest.len() < 1 + size {
            return Err("malformed quantisation table".into());
        }
        let table: [i32; 64] = std::array::from_fn(|k| {
            if precision == 0 {
                i32::from(rest[1 + k])
            } else {
                i32::from(u16::from_be_bytes([rest[1 + 2 * k], rest[2 + 2 * k]]))
            }
        });
        quant[index] = Some(table);
        rest = &rest[1 + size..];
    }
    Ok(())
}

/// The headers' verdict.
#[derive(Debug)]
pub(super) enum Parsed {
    Frame(Frame),
    /// A valid kind of JPEG this decoder leaves to the general one (the comment at each
    /// `Unsupported` says which).
    Unsupported,
}

pub(super) fn u16_at(bytes: &[u8], pos: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*bytes.get(pos)?, *bytes.get(pos + 1)?])))
}

/// The marker at or after `pos` and the position after it, as libjpeg's `next_marker` finds
/// it: bytes before an `FF` are skipped (libjpeg warns of "extraneous bytes before marker" and
/// goes on, and so PIL reads such files), then the `FF` fill bytes; an `FF 00` is skipped as
/// junk too. `None` when the data ends first.
pub(super) fn next_marker(bytes: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        pos += memchr::memchr(0xFF, bytes.get(pos..)?)?;
        while *bytes.get(pos)? == 0xFF {
            pos += 1;
        }
        if bytes[pos] != 0x00 {
            return Some((bytes[pos], pos + 1));
        }
        pos += 1;
    }
}

/// Reads the markers of `bytes` (which starts with SOI) up to the first start-of-scan.
pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut quant: [Option<[i32; 64]>; 4] = [None; 4];
    let mut dc_tables: Vec<Option<Rc<HuffTable>>> = vec![None; 4];
    let mut ac_tables: Vec<Option<Rc<HuffTable>>> = vec![None; 4];
    let mut frame: Option<(usize, usize, Vec<Component>)> = None;
    let mut restart_interval = 0;
    let mut markers = ColorMarkers::default();
    let mut pos = 2;
    loop {
        let marker;
        (marker, pos) = next_marker(bytes, pos).ok_or("the file ends inside its headers")?;
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue; // markers without a segment
        }
        if marker == 0xD9 {
            return Err("the file ends (EOI) before any image data".into());
        }
        let len = u16_at(bytes, pos).ok_or("the file ends inside its headers")?;
        if len < 2 || pos + len > bytes.len() {
            return Err(format!("marker 0x{marker:02X} at byte {} runs past the end of the file", pos - 2));
        }
        let seg = &bytes[pos + 2..pos + len];
        pos += len;
        match marker {
            0xC0 | 0xC1 => {
                if frame.is_some() {
                    return Err("two frame headers".into());
                }
                if seg.len() < 6 {
                    return Err("short frame header".into());
                }
                if seg[0] != 8 {
                    return Ok(Parsed::Unsupported); // not 8-bit
                }
                let (height, width, n) =
                    (u16_at(seg, 1).unwrap_or(0), u16_at(seg, 3).unwrap_or(0), usize::from(seg[5]));
                if height == 0 || width == 0 {
                    return Ok(Parsed::Unsupported); // no size in the frame header
                }
                if seg.len() < 6 + 3 * n || n == 0 {
                    return Err("short frame header".into());
                }
                let components = (0..n)
                    .map(|i| {
                        let c = &seg[6 + 3 * i..9 + 3 * i];
                        Component {
                            id: c[0],
                            h: usize::from(c[1] >> 4),
                            v: usize::from(c[1] & 15),
                            quant_zigzag: [0; 64],
                            quant_index: usize::from(c[2]),
                            dc_table: 0,
                            ac_table: 0,
                        }
                    })
                    .collect();
                frame = Some((width, height, components));
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Ok(Parsed::Unsupported); // progressive, lossless or arithmetic-coded
            }
            0xC4 => {
                let (dc, ac): (&mut [_; 4], &mut [_; 4]) =
                    (dc_tables.as_mut_slice().try_into().expect("4"), ac_tables.as_mut_slice().try_into().expect("4"));
                read_huffman(seg, dc, ac)?;
            }
            0xDB => read_quant(seg, &mut quant)?,
            0xDD => restart_interval = u16_at(seg, 0).ok_or("malformed restart interval")?,
            0xE0..=0xEF => markers.note(marker, seg),
            0xDA => {
                let (width, height, mut components) = frame.ok_or("a scan before the frame header")?;
                let n = usize::from(*seg.first().ok_or("malformed scan header")?);
                if seg.len() < 4 + 2 * n {
                    return Err("malformed scan header".into());
                }
                if n != components.len() {
                    return Ok(Parsed::Unsupported); // several scans
                }
                // A sequential scan's spectral selection and approximation bytes are ignored, as
                // libjpeg ignores them (with a warning): every coefficient is coded.
                for i in 0..n {
                    let (id, tables) = (seg[1 + 2 * i], seg[2 + 2 * i]);
                    let c = components.iter_mut().find(|c| c.id == id).ok_or("a scan names an unknown component")?;
                    c.dc_table = usize::from(tables >> 4);
                    c.ac_table = usize::from(tables & 15);
                }
                let ids: Vec<u8> = components.iter().map(|c| c.id).collect();
                let color = match markers.color(&ids) {
                    Some(color @ (Color::Gray | Color::YCbCr)) if unsupported_layout(&components).is_none() => color,
                    _ => return Ok(Parsed::Unsupported),
                };
                for c in &mut components {
                    let table = quant.get(c.quant_index).copied().flatten().ok_or("a missing quantisation table")?;
                    c.quant_zigzag = std::array::from_fn(|k| table[k]);
                    let has = |tables: &[Option<Rc<HuffTable>>], i: usize| tables.get(i).is_some_and(Option::is_some);
                    if !has(&dc_tables, c.dc_table) || !has(&ac_tables, c.ac_table) {
                        return Err("a missing Huffman table".into());
                    }
                }
                if components.len() == 1 {
                    // One component is coded block by block, whatever its sampling factors say.
                    components[0].h = 1;
                    components[0].v = 1;
                }
                return Ok(Parsed::Frame(Frame {
                    width,
                    height,
                    components,
                    dc_tables,
                    ac_tables,
                    restart_interval,
                    scan_start: pos,
                    color,
                }));
            }
            _ => {} // APPn, COM and others: nothing to decode
        }
    }
}

thread_local! {
    /// Huffman tables built on this thread, by their DHT bytes: files from one encoder share
    /// their tables (most use the standard ones), and building the lookup tables costs about
    /// as much as decoding a few rows.
    static TABLES: std::cell::RefCell<Vec<(Vec<u8>, Rc<HuffTable>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tables kept per thread.
const CACHED_TABLES: usize = 16;

/// The table of the DHT entry `spec` (class and index byte, 16 counts, symbols).
fn cached_table(spec: &[u8], is_ac: bool) -> Result<Rc<HuffTable>, String> {
    // The key: the class, then counts and symbols (the index does not change the table).
    let key: Vec<u8> = std::iter::once(u8::from(is_ac)).chain(spec[1..].iter().copied()).collect();
    if let Some(table) = TABLES.with_borrow(|tables| tables.iter().find(|(k, _)| *k == key).map(|(_, t)| t.clone())) {
        return Ok(table);
    }
    let counts: [u8; 16] = spec[1..17].try_into().expect("16 counts");
    let table = Rc::new(HuffTable::new(&counts, &spec[17..], is_ac)?);
    TABLES.with_borrow_mut(|tables| {
        if tables.len() == CACHED_TABLES {
            tables.remove(0);
        }
        tables.push((key, table.clone()));
    });
    Ok(table)
}

/// What walking a JPEG stream's segments finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamWalk {
    /// Where the end-of-image marker ends.
    pub(crate) end: usize,
    /// Huffman (DHT) and quantisation (DQT) table segments: a handful in any real file.
    pub(crate) table_segments: usize,
}

/// Walks the stream to its end-of-image marker, counting the table segments on the way: the
/// marker segments are skipped by their lengths (so an `FF D9` inside an EXIF thumbnail or a
/// comment does not count), each scan's entropy-coded data up to the next marker that is
/// neither a stuffed `FF 00` nor a restart. `None` for a stream cut short. Whatever follows the
/// marker (a motion photo's video, maker data) is not looked at; bytes between segments that
/// are not a marker are skipped, as libjpeg does.
pub(crate) fn stream_walk(bytes: &[u8]) -> Option<StreamWalk> {
    let mut pos = 2;
    let mut table_segments = 0;
    loop {
        let marker;
        (marker, pos) = next_marker(bytes, pos)?;
        match marker {
            0xD9 => return Some(StreamWalk { end: pos, table_segments }),
            0x01 | 0xD0..=0xD8 => {}
            0xC4 | 0xDB => {
                table_segments += 1;
                pos += u16_at(bytes, pos)?;
            }
            0xDA => {
                pos += u16_at(bytes, pos)?;
                // The entropy-coded data: up to an FF that starts a marker.
                loop {
                    pos += memchr::memchr(0xFF, bytes.get(pos..)?)?;
                    match *bytes.get(pos + 1)? {
                        0x00 | 0xFF | 0xD0..=0xD7 => pos += 1,
                        _ => break,
                    }
                }
            }
            _ => pos += u16_at(bytes, pos)?,
        }
    }
}

/// Where the frame header gives them, the image's width and height (scanning the markers
/// only); `None` for anything unexpected, which the full parser then reports.
pub(crate) fn frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    frame_info(bytes).map(|(w, h, _)| (w, h))
}

/// Whether the frame is arithmetic-coded (SOF9–11, SOF13–15), from the markers alone.
pub(crate) fn is_arithmetic(bytes: &[u8]) -> bool {
    frame_info(bytes).is_some_and(|(_, _, marker)| matches!(marker, 0xC9..=0xCB | 0xCD..=0xCF))
}

/// The frame header's width, height and marker.
fn frame_info(bytes: &[u8]) -> Option<(u32, u32, u8)> {
    let mut pos = 2;
    loop {
        let marker;
        (marker, pos) = next_marker(bytes, pos)?;
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue;
        }
        if matches!(marker, 0xD8..=0xDA) {
            return None;
        }
        let len = u16_at(bytes, pos)?;
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let (h, w) = (u16_at(bytes, pos + 3)?, u16_at(bytes, pos + 5)?);
            return (w > 0 && h > 0).then_some((w as u32, h as u32, marker));
        }
        pos += len;
    }
}

/// Why a frame's layout is left to the coefficient decoder, if it is.
fn unsupported_layout(components: &[Component]) -> Option<&'static str> {
    match components {
        [_] => None,
        [y, cb, cr] => {
            if (cb.h, cb.v, cr.h, cr.v) != (1, 1, 1, 1) || !matches!((y.h, y.v), (1, 1) | (2, 1) | (2, 2)) {
                Some("chroma sampling other than 4:4:4, 4:2:2 or 4:2:0")
            } else {
                None
            }
        }
        _ => Some("neither grayscale nor three components"),
    }
}
