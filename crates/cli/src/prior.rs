//! `dmlp prior`: what a trained PriorsNet baseline expects at a place and time, and where it
//! expects a class.

use std::path::PathBuf;

use anyhow::{Context, bail};
use dmlp_experiment::PriorModel;
use dmlp_geo::Observation;

use crate::predict::PlaceArgs;
use dmlp_model::parse_device;

#[derive(Debug, clap::Args)]
pub(crate) struct PriorArgs {
    /// The PriorsNet run folder (`dmlp baseline` with type = "priorsnet").
    #[arg(long)]
    run: PathBuf,
    /// The place (the classes likely there) and date (a prior trained with metadata =
    /// "geo_temporal" needs it).
    #[command(flatten)]
    place: PlaceArgs,
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// With --map: the class (its name, or its index) whose predicted range to draw.
    #[arg(long, requires = "map")]
    class: Option<String>,
    /// With --class: write its predicted range as a world map (.png or .svg).
    #[arg(long, requires = "class", conflicts_with_all = ["lat", "lon"])]
    map: Option<PathBuf>,
    /// The map's grid cell in degrees.
    #[arg(long, default_value_t = 0.5)]
    cell: f64,
    /// One JSON object on standard output.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub(crate) fn run_prior(args: &PriorArgs) -> anyhow::Result<()> {
    let place = args.place.observation()?;
    let date = place.date();
    let device = parse_device(&args.device)?;
    let model = PriorModel::open(&args.run, &device).with_context(|| format!("opening {}", args.run.display()))?;
    if let (Some(class), Some(map)) = (&args.class, &args.map) {
        let index = match model.classes.iter().position(|c| &c.name == class) {
            Some(i) => i,
            None => match class.parse::<usize>() {
                Ok(i) if i < model.classes.len() => i,
                _ => bail!(
                    "no class {class:?} in {} classes (names as in the run's classes.json, or an index)",
                    model.classes.len()
                ),
            },
        };
        dmlp_figures::Format::of(map)?;
        let grid = dmlp_figures::world_grid(args.cell)?;
        let observations = grid
            .centres
            .iter()
            .map(|&(lat, lon)| Observation::new(Some(lat), Some(lon), date))
            .collect::<Result<Vec<_>, _>>()?;
        let priors = model.prior_at(&observations)?;
        let values: Vec<f64> = priors.iter().map(|row| f64::from(row[index])).collect();
        let when = date.map(|d| format!(" on {d}")).unwrap_or_default();
        let title = format!("PriorsNet: where {} is expected{when}", model.classes[index].name);
        dmlp_figures::probability_map(map, &title, args.cell, &values)?;
        let peak = values.iter().copied().fold(0.0, f64::max);
        println!("wrote {} ({} cells of {}°, highest prior {peak:.3})", map.display(), values.len(), args.cell);
        return Ok(());
    }
    let (Some(lat), Some(lon)) = (place.latitude(), place.longitude()) else {
        bail!("give --lat and --lon (the classes likely there), or --class and --map (where a class is expected)");
    };
    let row = model.prior_at(&[place])?.pop().context("no prior")?;
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let top: Vec<(usize, f32)> = order.into_iter().take(args.top_k.max(1)).map(|c| (c, row[c])).collect();
    if args.json {
        let list: Vec<serde_json::Value> = top
            .iter()
            .map(|&(c, p)| {
                let class = &model.classes[c];
                serde_json::json!({"class": class.name, "supercategory": class.supercategory, "prior": p, "index": c})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"latitude": lat, "longitude": lon, "date": date.map(|d| d.to_string()), "metadata": model.metadata().as_str(), "top_k": list})
        );
    } else {
        let when = date.map(|d| format!(" on {d}")).unwrap_or_default();
        println!("PriorsNet ({}) at {lat:.4}, {lon:.4}{when}:", model.metadata());
        for (rank, (c, p)) in top.iter().enumerate() {
            let class = &model.classes[*c];
            let supercategory = class.supercategory.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            println!("  {}. {p:.4}  {}{supercategory}", rank + 1, class.name);
        }
    }
    Ok(())
}
