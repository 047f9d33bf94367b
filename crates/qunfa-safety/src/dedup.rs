//! Near-duplicate features: SimHash for text, a perceptual hash for images.
//!
//! A mass-messaging platform sees the same spam again and again with small
//! changes (a number, an emoji, a character swapped to dodge an exact-match
//! filter, an image re-encoded or resized). Exact hashes miss those; these
//! 64-bit fingerprints move little under small edits, so "within a few bits
//! of something already blocked or already sent a thousand times" is a
//! feature for the rules and the risk model.
//!
//! * [`simhash`]: Charikar's SimHash over character 3-gram shingles of the
//!   already-normalised text, each occurrence counted (so a shingle's weight
//!   is its count). Shingles are hashed with a fixed function (FNV-1a, then
//!   the MurmurHash3 finaliser to spread the bits), never with a randomly
//!   seeded hasher, so fingerprints are the same on every platform and run
//!   and can be stored. Compare with [`hamming`] against [`SIMHASH_NEAR`]
//!   (10 bits; see there for why).
//! * [`image_hash`]: pHash of a PNG, JPEG or GIF: 32×32 grayscale, 2-D DCT,
//!   the 8×8 lowest frequencies without the DC term, one bit per coefficient
//!   above their median. Compare against [`IMAGE_NEAR`]. Decoding is bounded:
//!   the header's dimensions are checked against [`MAX_IMAGE_PIXELS`] before
//!   any pixel buffer is allocated.
//!
//! Both are pure functions of their input: no I/O, no clock.

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};
use std::io::Cursor;

/// Texts whose [`simhash`]es are at most this many bits apart are
/// near-duplicates.
///
/// Chosen from measurements on the benign corpus (`/work/shared/data/corpus`,
/// about 29,000 distinct lines of news and reviews of at least 20
/// characters). Unrelated texts are far: among 200,000 random pairs of
/// different lines none was within 12 bits (among short reviews of 20–40
/// characters, 2 in 200,000 were within 10, and those share most of their
/// words). An edit, though, changes up to three shingles, so it moves a short
/// text several bits, and the classic threshold of 3 (Manku et al., for web
/// pages) misses most edited messages. Share of lines still near after random
/// edits (one edit: a character replaced; three: replaced, inserted, deleted):
///
/// | length (chars) | 1 edit, ≤ 3 | 1 edit, ≤ 10 | 3 edits, ≤ 3 | 3 edits, ≤ 10 |
/// |----------------|-------------|--------------|--------------|---------------|
/// | 20–40          | 4 %         | 71 %         | 1 %          | 18 %          |
/// | 50–100         | 20 %        | 98 %         | 3 %          | 67 %          |
/// | 100–200        | 45 %        | 99.8 %       | 13 %         | 93 %          |
/// | 200–400        | 71 %        | 100 %        | 32 %         | 99.5 %        |
///
/// 10 bits corresponds roughly to a cosine similarity of 0.88 between the
/// shingle counts. Texts of a few dozen characters move too far under any
/// edit: compare those exactly (after normalisation) as well.
pub const SIMHASH_NEAR: u32 = 10;

/// Images whose [`image_hash`]es are at most this many bits apart are
/// near-duplicates. Re-encoding, JPEG quality and resizing move a pHash by a
/// few bits; different pictures are around 32 bits apart.
pub const IMAGE_NEAR: u32 = 10;

/// The largest image [`image_hash`] decodes, in pixels (40 megapixels).
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// Number of differing bits.
#[must_use]
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// 64-bit SimHash of `normalised` over its character 3-grams, each
/// occurrence weighted 1 (so repeated shingles weigh their count). A text of
/// fewer than three characters is one shingle; the empty text hashes to 0.
///
/// Stable: the same text gives the same value on every platform, version of
/// Rust and run.
#[must_use]
pub fn simhash(normalised: &str) -> u64 {
    if normalised.is_empty() {
        return 0;
    }
    let mut counts = BitCounts { lanes: [0; 8], pending: 0, total: 0, counts: [0; 64] };
    // Byte offsets of the last four character boundaries.
    let mut bounds = [0usize; 4];
    let mut seen = 0usize;
    for (pos, _) in normalised.char_indices().skip(1).chain(std::iter::once((normalised.len(), ' '))) {
        bounds.rotate_left(1);
        bounds[3] = pos;
        seen += 1;
        if seen >= 3 {
            counts.add(shingle_hash(&normalised.as_bytes()[bounds[0]..bounds[3]]));
        }
    }
    if seen < 3 {
        counts.add(shingle_hash(normalised.as_bytes()));
    }
    counts.majority()
}

/// Per-bit counts of set bits over many hashes. The SimHash weight of a bit
/// is (set − unset), positive exactly when the bit is set in more than half
/// of the hashes.
///
/// Counting goes eight bits at a time: a table spreads each byte of a hash
/// into eight one-byte lanes of a `u64`, so a hash costs eight additions
/// instead of 64; the lanes are emptied into `u32` counters before they can
/// overflow.
struct BitCounts {
    lanes: [u64; 8],
    pending: u32,
    total: u64,
    counts: [u64; 64],
}

/// `SPREAD[b]` has byte lane `i` equal to bit `i` of `b`.
const SPREAD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            table[b] |= ((b as u64 >> i) & 1) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    table
};

impl BitCounts {
    fn add(&mut self, h: u64) {
        for (j, lane) in self.lanes.iter_mut().enumerate() {
            *lane += SPREAD[((h >> (8 * j)) & 0xff) as usize];
        }
        self.pending += 1;
        self.total += 1;
        if self.pending == 255 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (j, lane) in self.lanes.iter_mut().enumerate() {
            for i in 0..8 {
                self.counts[8 * j + i] += (*lane >> (8 * i)) & 0xff;
            }
            *lane = 0;
        }
        self.pending = 0;
    }

    fn majority(mut self) -> u64 {
        self.flush();
        let total = self.total;
        self.counts.iter().enumerate().fold(0u64, |acc, (bit, &c)| acc | (u64::from(2 * c > total) << bit))
    }
}

/// FNV-1a 64 with the MurmurHash3 64-bit finaliser: fixed, and every input
/// bit affects every output bit.
fn shingle_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Why an image could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum ImageHashError {
    /// The bytes are not a PNG, JPEG or GIF image.
    #[error("not a PNG, JPEG or GIF image")]
    UnknownFormat,
    /// A recognised image format that is not decoded here (WebP, BMP, …).
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    /// The header claims more pixels than [`MAX_IMAGE_PIXELS`].
    #[error("image of {width}×{height} pixels is larger than {MAX_IMAGE_PIXELS} pixels")]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// The image has no pixels.
    #[error("image has no pixels")]
    Empty,
    /// The data is damaged or truncated.
    #[error("cannot decode image: {0}")]
    Decode(String),
}

fn decode_error(e: image::ImageError) -> ImageHashError {
    match e {
        image::ImageError::Unsupported(u) => ImageHashError::Unsupported(u.to_string()),
        image::ImageError::Limits(l) => ImageHashError::Decode(l.to_string()),
        other => ImageHashError::Decode(other.to_string()),
    }
}

/// Perceptual hash (pHash) of an uploaded image: decode the first frame,
/// reduce to 32×32 grayscale (transparent pixels over white), take the 2-D
/// DCT-II, keep the 8×8 lowest frequencies, and set one bit for each of the
/// 63 coefficients other than the DC term that is above their median. Bit
/// `8·v + u` is the coefficient of vertical frequency `v` and horizontal
/// frequency `u`; bit 0 (the DC term) is always 0. A uniform image hashes to
/// 0.
///
/// # Errors
///
/// [`ImageHashError::UnknownFormat`] when the bytes are not a PNG, JPEG or
/// GIF; [`ImageHashError::Unsupported`] for other recognised formats;
/// [`ImageHashError::TooLarge`] when the header claims more than
/// [`MAX_IMAGE_PIXELS`] (checked before decoding, so a forged header costs
/// nothing); [`ImageHashError::Empty`] for a zero-sized image;
/// [`ImageHashError::Decode`] for damaged or truncated data.
pub fn image_hash(bytes: &[u8]) -> Result<u64, ImageHashError> {
    let image = decode(bytes)?;
    let gray = grayscale_32(&image);
    Ok(phash_bits(&dct_8x8(&gray)))
}

/// Decoder limits. For the header probe only the allocation bound, so that
/// a forged size is reported as [`ImageHashError::TooLarge`] with its
/// dimensions; for decoding also the sides.
fn limits(width: Option<u32>, height: Option<u32>) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = width;
    limits.max_image_height = height;
    // 40 megapixels of 16-bit RGBA, plus decoder state.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
    limits
}

fn reader(bytes: &[u8], limits: Limits) -> Result<ImageReader<Cursor<&[u8]>>, ImageHashError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageHashError::Decode(e.to_string()))?;
    match reader.format() {
        None => return Err(ImageHashError::UnknownFormat),
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::Gif) => {}
        Some(other) => return Err(ImageHashError::Unsupported(format!("{other:?}"))),
    }
    reader.limits(limits);
    Ok(reader)
}

fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageHashError> {
    // The header first: refuse huge images before anything is allocated.
    let (width, height) = reader(bytes, limits(None, None))?.into_dimensions().map_err(decode_error)?;
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageHashError::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(ImageHashError::Empty);
    }
    let image = reader(bytes, limits(Some(width), Some(height)))?.decode().map_err(decode_error)?;
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageHashError::Empty);
    }
    Ok(image)
}

/// 32×32 luma in [0, 1], row-major; alpha composited over white.
fn grayscale_32(image: &DynamicImage) -> [f64; 32 * 32] {
    // Box-average large images (fast, every pixel counts); filter small ones.
    let small = if image.width() >= 32 && image.height() >= 32 {
        image.thumbnail_exact(32, 32)
    } else {
        image.resize_exact(32, 32, FilterType::Triangle)
    };
    let rgba = small.to_rgba32f();
    let mut out = [0.0; 32 * 32];
    for (o, p) in out.iter_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = p.0.map(f64::from);
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        *o = a * luma + (1.0 - a);
    }
    out
}

/// The 8×8 lowest-frequency coefficients of the 32×32 DCT-II, `[v][u]`.
fn dct_8x8(pixels: &[f64; 32 * 32]) -> [[f64; 8]; 8] {
    let mut cos = [[0.0; 32]; 8];
    for (k, row) in cos.iter_mut().enumerate() {
        for (x, c) in row.iter_mut().enumerate() {
            *c = (std::f64::consts::PI * (2 * x + 1) as f64 * k as f64 / 64.0).cos();
        }
    }
    // Rows first: rows[y][u] = Σx p[y][x]·cos(u, x).
    let mut rows = [[0.0; 8]; 32];
    for (y, row) in rows.iter_mut().enumerate() {
        let line = &pixels[y * 32..y * 32 + 32];
        for (u, r) in row.iter_mut().enumerate() {
            *r = line.iter().zip(&cos[u]).map(|(p, c)| p * c).sum();
        }
    }
    let mut out = [[0.0; 8]; 8];
    for (v, o) in out.iter_mut().enumerate() {
        for (u, value) in o.iter_mut().enumerate() {
            *value = rows.iter().zip(&cos[v]).map(|(r, c)| r[u] * c).sum();
        }
    }
    out
}

fn phash_bits(dct: &[[f64; 8]; 8]) -> u64 {
    let ac: Vec<f64> = dct.iter().flatten().skip(1).copied().collect();
    let mut sorted = ac.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    // Rounding noise on flat images must not set bits.
    let eps = 1e-9 * dct[0][0].abs().max(1.0);
    ac.iter().enumerate().fold(0u64, |acc, (i, &c)| acc | (u64::from(c > median + eps) << (i + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage};
    use std::time::Instant;

    /// A deterministic generator for the tests (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn simhash_is_stable() {
        // Pinned values: a change here breaks stored fingerprints.
        let cases: &[(&str, u64)] = &[
            ("", 0),
            ("a", 0x82a2_a958_a9be_ce5b),
            ("ab", 0xda71_cbd1_1dd9_bde4),
            ("abc", 0x33eb_af99_27cb_c5bd),
            ("限时优惠，点击领取", 0xbb1c_f8d2_4791_1524),
        ];
        for &(text, want) in cases {
            assert_eq!(simhash(text), want, "{text:?}: {:#018x}", simhash(text));
        }
        // One shingle: the SimHash is the shingle's hash.
        assert_eq!(simhash("abc"), shingle_hash(b"abc"));
        // Two shingles: ties (one +1, one -1) give 0 bits.
        assert_eq!(simhash("abcd"), shingle_hash(b"abc") & shingle_hash(b"bcd"));
        assert_eq!(hamming(0, u64::MAX), 64);
        // The byte-lane counting equals the textbook definition, also past
        // the 255-shingle flush.
        let long = AD.repeat(7);
        for text in [AD, long.as_str(), "abcd", "ababababab"] {
            let chars: Vec<char> = text.chars().collect();
            let mut weights = [0i64; 64];
            for w in chars.windows(3) {
                let h = shingle_hash(w.iter().collect::<String>().as_bytes());
                for (bit, weight) in weights.iter_mut().enumerate() {
                    *weight += if h >> bit & 1 == 1 { 1 } else { -1 };
                }
            }
            let want = weights.iter().enumerate().fold(0u64, |acc, (bit, &w)| acc | (u64::from(w > 0) << bit));
            assert_eq!(simhash(text), want, "{text}");
        }
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }

    const AD: &str = "【限时福利】亲爱的会员您好，本店周年庆全场商品五折起，满199元再减50元，\
        前100名下单的顾客还可以获得精美礼品一份。活动时间12月1日至12月3日，数量有限，先到先得，\
        详情请咨询店内客服或者回复本消息，退订请回复TD。";

    /// (description, edited text): each is near [`AD`].
    fn edits() -> Vec<(&'static str, String)> {
        vec![
            ("number changed", AD.replace("199", "299")),
            ("characters swapped", AD.replace("五折", "六折")),
            ("emoji inserted", AD.replacen("您好", "您好🎉", 1)),
            ("word inserted", AD.replacen("精美礼品", "精美实用礼品", 1)),
            ("punctuation removed", AD.replacen("，", "", 2)),
            ("tail changed", AD.replace("退订请回复TD", "退订回T")),
        ]
    }

    #[test]
    fn small_edits_are_near() {
        let base = simhash(AD);
        for (what, text) in edits() {
            let d = hamming(base, simhash(&text));
            assert!(d <= SIMHASH_NEAR, "{what}: distance {d}");
        }
        let unrelated = "今天天气很好，我们去公园散步，看到很多人在放风筝，孩子们玩得很开心。";
        assert!(hamming(base, simhash(unrelated)) > SIMHASH_NEAR);
    }

    const CORPUS: &str = "/work/shared/data/corpus";

    fn corpus_lines() -> Option<Vec<String>> {
        let mut lines = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(CORPUS)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(path).ok()?;
            lines.extend(text.lines().map(str::trim).filter(|l| l.chars().count() >= 20).map(str::to_owned));
        }
        lines.sort();
        lines.dedup();
        Some(lines)
    }

    #[test]
    fn corpus_false_near_rate() {
        let Some(lines) = corpus_lines() else {
            println!("skipped: {CORPUS} is missing");
            return;
        };
        let mut rng = Rng(0x5eed);
        let pairs = 2000;
        let mut near = 0;
        let mut examples = Vec::new();
        for _ in 0..pairs {
            let a = &lines[rng.below(lines.len())];
            let b = &lines[rng.below(lines.len())];
            if a == b {
                continue;
            }
            if hamming(simhash(a), simhash(b)) <= SIMHASH_NEAR {
                near += 1;
                examples.push((a.clone(), b.clone()));
            }
        }
        let rate = f64::from(near) / f64::from(pairs);
        println!("{} lines; {near} of {pairs} random pairs near ({:.2} %): {examples:?}", lines.len(), rate * 100.0);
        assert!(rate <= 0.005, "{rate}");
    }

    #[test]
    fn corpus_edits_stay_near() {
        let Some(lines) = corpus_lines() else {
            println!("skipped: {CORPUS} is missing");
            return;
        };
        let long: Vec<&String> = lines.iter().filter(|l| l.chars().count() >= 100).collect();
        let mut rng = Rng(7);
        let trials = 500;
        let mut near = 0;
        let mut distances = [0u32; 65];
        let t = Instant::now();
        for _ in 0..trials {
            let line = long[rng.below(long.len())];
            let mut chars: Vec<char> = line.chars().collect();
            // Three edits: replace, insert, delete.
            let i = rng.below(chars.len());
            chars[i] = '某';
            let i = rng.below(chars.len());
            chars.insert(i, '！');
            let i = rng.below(chars.len());
            chars.remove(i);
            let edited: String = chars.into_iter().collect();
            let d = hamming(simhash(line), simhash(&edited));
            distances[d as usize] += 1;
            near += u32::from(d <= SIMHASH_NEAR);
        }
        println!(
            "edited lines of ≥100 characters: {near} of {trials} near; distance histogram {:?}; {:?} per pair",
            &distances[..12],
            t.elapsed() / trials / 2
        );
        assert!(f64::from(near) / f64::from(trials) >= 0.85);
    }

    /// A test picture: a diagonal gradient with a disc and a bar.
    fn pattern(w: u32, h: u32, variant: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let v = match variant {
                0 => {
                    let disc = (fx - 0.35).powi(2) + (fy - 0.4).powi(2) < 0.04;
                    let bar = (0.7..0.85).contains(&fx) && fy > 0.2;
                    if disc {
                        30.0
                    } else if bar {
                        230.0
                    } else {
                        (fx + fy) * 100.0 + 20.0
                    }
                }
                _ => {
                    // Stripes and a square somewhere else.
                    let stripes = ((fy * 6.0) as u32 % 2) as f32 * 150.0;
                    let square = (0.55..0.9).contains(&fx) && (0.05..0.4).contains(&fy);
                    if square {
                        250.0
                    } else {
                        stripes + (1.0 - fx) * 80.0
                    }
                }
            };
            let v = v.clamp(0.0, 255.0) as u8;
            Rgb([v, v / 2 + 40, 255 - v])
        })
    }

    fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(image).expect("encode jpeg");
        out
    }

    #[test]
    fn image_variants_are_near() {
        let original = pattern(400, 300, 0);
        let base = image_hash(&encode(&original, ImageFormat::Png)).expect("png");
        assert_ne!(base, 0);
        let half = image::imageops::resize(&original, 200, 150, FilterType::Triangle);
        let variants: Vec<(&str, Vec<u8>)> = vec![
            ("jpeg q90", jpeg(&original, 90)),
            ("jpeg q40", jpeg(&original, 40)),
            ("gif", encode(&original, ImageFormat::Gif)),
            ("png at 50 %", encode(&half, ImageFormat::Png)),
            ("jpeg q60 at 50 %", jpeg(&half, 60)),
        ];
        for (what, bytes) in &variants {
            let d = hamming(base, image_hash(bytes).expect(what));
            println!("{what}: distance {d}");
            assert!(d <= IMAGE_NEAR, "{what}: distance {d}");
        }
        let other = image_hash(&encode(&pattern(400, 300, 1), ImageFormat::Png)).expect("png");
        let d = hamming(base, other);
        println!("different picture: distance {d}");
        assert!(d > IMAGE_NEAR * 2, "distance {d}");
    }

    #[test]
    fn image_edge_cases() {
        // Uniform and tiny images hash without trouble.
        let flat = RgbImage::from_pixel(50, 50, Rgb([10, 200, 30]));
        assert_eq!(image_hash(&encode(&flat, ImageFormat::Png)).expect("flat"), 0);
        let tiny = pattern(3, 2, 0);
        image_hash(&encode(&tiny, ImageFormat::Png)).expect("tiny");
        // Transparent pixels count as white.
        let clear = image::RgbaImage::from_pixel(40, 40, image::Rgba([0, 0, 0, 0]));
        let mut out = Cursor::new(Vec::new());
        clear.write_to(&mut out, ImageFormat::Png).expect("png");
        assert_eq!(image_hash(out.get_ref()).expect("clear"), 0);
    }

    #[test]
    fn image_errors() {
        let mut rng = Rng(1);
        let random: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        assert!(matches!(image_hash(&random), Err(ImageHashError::UnknownFormat)));
        assert!(matches!(image_hash(b""), Err(ImageHashError::UnknownFormat)));
        assert!(matches!(image_hash(b"hello"), Err(ImageHashError::UnknownFormat)));
        // BMP is recognised but not decoded here.
        let bmp = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0";
        assert!(matches!(image_hash(bmp), Err(ImageHashError::Unsupported(_))));

        // A PNG header claiming 100000×100000 pixels: refused at once.
        let huge = png_header(100_000, 100_000);
        let t = Instant::now();
        let err = image_hash(&huge).expect_err("huge");
        assert!(t.elapsed().as_millis() < 100, "{:?}", t.elapsed());
        assert!(matches!(err, ImageHashError::TooLarge { width: 100_000, height: 100_000 }), "{err}");
        // Within the per-side limit but over 40 megapixels.
        let err = image_hash(&png_header(10_000, 5_000)).expect_err("too many pixels");
        assert!(matches!(err, ImageHashError::TooLarge { width: 10_000, height: 5_000 }), "{err}");
        println!("{err}");

        // Truncated and corrupted images fail cleanly, never panic.
        let good = [
            encode(&pattern(64, 48, 0), ImageFormat::Png),
            jpeg(&pattern(64, 48, 0), 80),
            encode(&pattern(64, 48, 0), ImageFormat::Gif),
        ];
        for bytes in &good {
            image_hash(bytes).expect("good image");
            for cut in (0..bytes.len()).step_by(7) {
                let _ = image_hash(&bytes[..cut]);
            }
            for _ in 0..300 {
                let mut bad = bytes.clone();
                for _ in 0..4 {
                    let i = rng.below(bad.len());
                    bad[i] = rng.next() as u8;
                }
                let _ = image_hash(&bad);
            }
        }
    }

    /// The signature and IHDR chunk of a PNG of the given size, and no data.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&ihdr);
        out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        for chunk in [&b"IDAT\x78\x9c"[..], &b"IEND"[..]] {
            out.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn image_hash_speed() {
        let bytes = jpeg(&pattern(1920, 1080, 0), 85);
        let t = Instant::now();
        let rounds = 5;
        for _ in 0..rounds {
            std::hint::black_box(image_hash(&bytes).expect("jpeg"));
        }
        println!("image_hash of a 1920×1080 JPEG: {:?}", t.elapsed() / rounds);
        let text = AD.repeat(10);
        let t = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(simhash(std::hint::black_box(&text)));
        }
        println!("simhash of {} characters: {:?}", text.chars().count(), t.elapsed() / 100);
    }
}
