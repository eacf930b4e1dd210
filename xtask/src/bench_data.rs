//! `cargo xtask bench data`: the input pipeline's images per second per core, training and
//! evaluation transforms, on iNat-sized JPEGs the command writes (500×375 as iNat 2021, 800×600 as
//! iNat 2017/2018, one in four portrait), beside PIL + torchvision's transforms on the same files in
//! the same run. One thread on each side; the JPEG bytes are read into memory first on both.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use dmlp_backbones::{IMAGENET_MEAN, IMAGENET_STD};
use dmlp_datasets::synth::photo_like_jpeg;
use dmlp_vision::{Normalization, Renderer, Transform};

#[derive(Debug, clap::Args)]
pub(crate) struct DataBenchArgs {
    /// A Python with Pillow (and torchvision, if installed, for its transforms). Default:
    /// `python3` if it has Pillow; otherwise the PIL side is skipped, saying why.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Images of each size.
    #[arg(long, default_value_t = 32)]
    images: usize,
    /// Timed passes over the images of each size (the best is reported, after one warm-up pass);
    /// dmlp's and PIL's passes alternate.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Where to write the JPEGs (default: a folder under target/).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object as the last line of standard output (logs go to standard error).
    #[arg(long)]
    json: bool,
}

const SIZE: u32 = 224;

/// The benchmark's files: `s*.jpg` about 500×375, `l*.jpg` about 800×600.
fn write_images(dir: &Path, per_size: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for (prefix, (w, h)) in [("s", (500u32, 375u32)), ("l", (800, 600))] {
        for i in 0..per_size {
            let (w, h) = if i % 4 == 3 { (h, w) } else { (w, h) };
            let name = format!("{prefix}{i:03}.jpg");
            let bytes = photo_like_jpeg(w, h, i as u64 + if prefix == "l" { 1000 } else { 0 }, 90)?;
            std::fs::write(dir.join(&name), &bytes)?;
            files.push((name, bytes));
        }
    }
    // The peer reads exactly these files, whatever else the folder holds.
    let list: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    std::fs::write(dir.join("files.txt"), list.join("\n") + "\n")?;
    Ok(files)
}

/// What one timed pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Train,
    Eval,
    Decode,
}

impl Work {
    const ALL: [Work; 3] = [Work::Train, Work::Eval, Work::Decode];

    fn name(self) -> &'static str {
        match self {
            Work::Train => "train",
            Work::Eval => "eval",
            Work::Decode => "decode",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Work::Train => "train (RandomResizedCrop)",
            Work::Eval => "eval (Resize + CenterCrop)",
            Work::Decode => "decode alone (JPEG → RGB)",
        }
    }
}

/// dmlp's side: one pass of `work` over `files`, in seconds, one thread.
struct Ours {
    renderer: Renderer,
    rng: rand_chacha::ChaCha8Rng,
    out: Vec<f32>,
}

impl Ours {
    fn pass(&mut self, files: &[&(String, Vec<u8>)], work: Work) -> anyhow::Result<f64> {
        let norm = Normalization { mean: IMAGENET_MEAN, std: IMAGENET_STD };
        let transform = match work {
            Work::Train => Transform::train(SIZE),
            _ => Transform::eval_for(SIZE),
        };
        self.out.resize(transform.floats_per_image(), 0.0);
        let started = Instant::now();
        for (name, bytes) in files {
            let path = Path::new(name);
            if work == Work::Decode {
                std::hint::black_box(dmlp_vision::decode::decode(bytes, path)?);
            } else {
                self.renderer.render(bytes, path, &[transform], &norm, &mut self.rng, &mut [&mut self.out])?;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// The PIL side: a process that runs one pass per request.
struct Peer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    pillow_version: String,
    transforms: String,
}

impl Peer {
    fn start(python: &Path, dir: &Path) -> anyhow::Result<Self> {
        let script = crate::paths::project_root().join("xtask").join("python").join("bench_data.py");
        eprintln!("peer: {} {}", python.display(), script.display());
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--dir".as_ref(), dir.as_os_str(), "--size".as_ref(), SIZE.to_string().as_ref()])
            .env("OMP_NUM_THREADS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        let stdin = child.stdin.take().context("the peer's stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("the peer's stdout")?);
        let mut peer = Peer { child, stdin, stdout, pillow_version: String::new(), transforms: String::new() };
        let hello = peer.read_line()?;
        peer.pillow_version = hello["pillow_version"].as_str().unwrap_or("?").to_owned();
        peer.transforms = hello["transforms"].as_str().unwrap_or("?").to_owned();
        Ok(peer)
    }

    fn read_line(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            anyhow::bail!("bench_data.py stopped ({status}); its error is above");
        }
        serde_json::from_str(&line).with_context(|| format!("parsing the peer's line {line:?}"))
    }

    fn pass(&mut self, prefix: &str, work: Work) -> anyhow::Result<f64> {
        use std::io::Write;
        writeln!(self.stdin, "{} {prefix}", work.name())?;
        self.stdin.flush()?;
        self.read_line()?["seconds"].as_f64().context("the peer's pass time")
    }
}

fn default_python() -> Result<PathBuf, String> {
    let python = PathBuf::from("python3");
    match Command::new(&python).args(["-c", "import PIL"]).output() {
        Ok(out) if out.status.success() => Ok(python),
        Ok(_) => Err("python3 has no Pillow (give --python PATH)".into()),
        Err(e) => Err(format!("no python3 ({e}); give --python PATH")),
    }
}

/// Images per second from the best pass of each group `(prefix, work)`.
type Rates = std::collections::BTreeMap<(String, &'static str), f64>;

pub(crate) fn run(args: &DataBenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; `cargo xtask-release bench data` gives real figures");
    }
    let dir = args.dir.clone().unwrap_or_else(|| crate::paths::project_root().join("target").join("bench-data"));
    let files = write_images(&dir, args.images)?;
    eprintln!("bench data: {} JPEGs in {} (quality 90), one thread on each side", files.len(), dir.display());
    let python = match &args.python {
        Some(p) => Ok(p.clone()),
        None => default_python(),
    };
    let mut peer = match python {
        Ok(python) => Peer::start(&python, &dir).map_err(|e| format!("{e:#}")),
        Err(why) => Err(why),
    };
    let mut ours = Ours { renderer: Renderer::new(), rng: rand::SeedableRng::seed_from_u64(0), out: Vec::new() };
    // Best pass per (size, work) on each side; the passes alternate between the two sides.
    let (mut mine, mut theirs): (Rates, Rates) = (Rates::new(), Rates::new());
    for prefix in ["s", "l"] {
        let subset: Vec<&(String, Vec<u8>)> = files.iter().filter(|(n, _)| n.starts_with(prefix)).collect();
        for work in Work::ALL {
            let key = (prefix.to_owned(), work.name());
            for pass in 0..=args.passes.max(1) {
                let t = ours.pass(&subset, work)?;
                if pass > 0 {
                    let rate = subset.len() as f64 / t;
                    mine.entry(key.clone()).and_modify(|r| *r = r.max(rate)).or_insert(rate);
                }
                if let Ok(p) = peer.as_mut() {
                    match p.pass(prefix, work) {
                        Ok(t) if pass > 0 => {
                            let rate = subset.len() as f64 / t;
                            theirs.entry(key.clone()).and_modify(|r| *r = r.max(rate)).or_insert(rate);
                        }
                        Ok(_) => {}
                        Err(e) => peer = Err(format!("{e:#}")),
                    }
                }
            }
        }
    }
    // Both sizes together: the harmonic combination of the per-size rates (equal image counts).
    let combined = |rates: &Rates, work: Work| -> Option<f64> {
        let s = rates.get(&("s".to_owned(), work.name()))?;
        let l = rates.get(&("l".to_owned(), work.name()))?;
        Some(2.0 / (1.0 / s + 1.0 / l))
    };
    println!("{:<28} {:>10} {:>10} {:>8}", "images/s per core", "dmlp", "PIL", "ratio");
    for work in Work::ALL {
        let m = combined(&mine, work).unwrap_or(f64::NAN);
        match combined(&theirs, work) {
            Some(t) => println!("{:<28} {m:>10.1} {t:>10.1} {:>7.2}×", work.label(), m / t),
            None => println!("{:<28} {m:>10.1} {:>10} {:>8}", work.label(), "-", "-"),
        }
        for (prefix, size) in [("s", "500×375"), ("l", "800×600")] {
            let key = (prefix.to_owned(), work.name());
            let m = mine.get(&key).copied().unwrap_or(f64::NAN);
            match theirs.get(&key) {
                Some(t) => println!("  {size:<26} {m:>10.1} {t:>10.1} {:>7.2}×", m / t),
                None => println!("  {size:<26} {m:>10.1} {:>10} {:>8}", "-", "-"),
            }
        }
    }
    match &peer {
        Ok(p) => println!("(PIL {} with {}; ratio = dmlp rate / PIL rate)", p.pillow_version, p.transforms),
        Err(why) => println!("PIL side skipped: {why}"),
    }
    if args.json {
        let by_size = |rates: &Rates| -> serde_json::Value {
            rates
                .iter()
                .map(|((prefix, work), r)| {
                    let size = if prefix == "s" { "500x375" } else { "800x600" };
                    (format!("{work}_{size}"), serde_json::json!(r))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let mut json = serde_json::json!({
            "images": files.len(),
            "train_images_per_s_per_core": combined(&mine, Work::Train),
            "eval_images_per_s_per_core": combined(&mine, Work::Eval),
            "decode_images_per_s_per_core": combined(&mine, Work::Decode),
            "by_size": by_size(&mine),
        });
        match &peer {
            Ok(p) => {
                json["pil_train_images_per_s_per_core"] = combined(&theirs, Work::Train).into();
                json["pil_eval_images_per_s_per_core"] = combined(&theirs, Work::Eval).into();
                json["pil_decode_images_per_s_per_core"] = combined(&theirs, Work::Decode).into();
                json["pil_version"] = p.pillow_version.clone().into();
                json["pil_transforms"] = p.transforms.clone().into();
                json["pil_by_size"] = by_size(&theirs);
            }
            Err(why) => json["pil_skipped"] = why.clone().into(),
        }
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}
