//! The figures' numbers, and files that open as what they claim.

use super::*;

#[test]
fn per_class_steps_rank_by_the_first_run_and_average_windows() {
    let labels = vec!["image only".to_owned(), "dynamic mlp".to_owned()];
    // Class 2 has no images; the baseline's order is 3 (10), 0 (20), 4 (30), 1 (80).
    let baseline = vec![Some(20.0), Some(80.0), None, Some(10.0), Some(30.0)];
    let fused = vec![Some(60.0), Some(90.0), None, Some(40.0), Some(50.0)];
    let series = per_class_steps(&labels, &[baseline, fused], 2).unwrap();
    assert_eq!(series[0].points, [(0.0, 15.0), (2.0, 15.0), (2.0, 55.0), (4.0, 55.0)]);
    assert_eq!(series[1].points, [(0.0, 50.0), (2.0, 50.0), (2.0, 70.0), (4.0, 70.0)]);
    assert_eq!(series[1].label, "dynamic mlp");
    assert!(per_class_steps(&labels, &[vec![Some(1.0)], vec![Some(1.0), Some(2.0)]], 2).is_err());
    assert!(per_class_steps(&labels[..1], &[vec![None]], 2).is_err());
}

fn decoded_png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

#[test]
fn charts_and_heatmaps_are_whole_pngs_and_svgs() {
    let dir = tempfile::tempdir().unwrap();
    let series = vec![
        Series { label: "a".into(), points: vec![(1.0, 10.0), (2.0, 30.0), (3.0, 35.0)] },
        Series { label: "b".into(), points: vec![(1.0, 12.0), (2.0, 40.0), (3.0, 50.0)] },
    ];
    let png = dir.path().join("nested/curves.png");
    line_chart(&png, "top-1 per epoch", "epoch", "top-1 (%)", &series).unwrap();
    let image = decoded_png(&png);
    assert_eq!(image.dimensions(), (900, 560));
    let coloured = image.pixels().filter(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]).count();
    assert!(coloured > 500, "the curves are drawn in colour ({coloured} pixels)");
    let dark = image.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
    assert!(dark > 500, "axes and text are drawn ({dark} dark pixels)");
    let svg = dir.path().join("curves.svg");
    line_chart(&svg, "top-1 per epoch", "epoch", "top-1 (%)", &series).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("top-1 per epoch") && text.contains("epoch"), "{}", &text[..200]);
    assert!(
        line_chart(&dir.path().join("x.jpg"), "", "", "", &series).unwrap_err().to_string().contains(".png or .svg")
    );
    let nan = [Series { label: "n".into(), points: vec![(1.0, f64::NAN)] }];
    assert!(line_chart(&dir.path().join("n.png"), "", "", "", &nan).is_err());
    assert!(!dir.path().join("n.png").exists(), "nothing is left behind");

    let map = dir.path().join("locations.png");
    let points: Vec<(f64, f64)> = (0..500).map(|i| (40.0 + f64::from(i % 10), -100.0 + f64::from(i % 25))).collect();
    location_heatmap(&map, "training locations", &points, 1.0).unwrap();
    let image = decoded_png(&map);
    assert_eq!(image.dimensions(), (1000, 560));
    let hot = image.pixels().filter(|p| i32::from(p.0[0]) > i32::from(p.0[1]) + 40).count();
    assert!(hot > 100, "the cells holding photos are coloured ({hot} pixels)");
    let err = location_heatmap(&map, "", &[(95.0, 0.0)], 1.0).unwrap_err().to_string();
    assert!(err.contains("95"), "{err}");
    assert!(location_heatmap(&map, "", &points, 0.1).is_err());
}

#[test]
fn a_probability_map_takes_one_value_per_grid_cell() {
    let dir = tempfile::tempdir().unwrap();
    let grid = world_grid(10.0).unwrap();
    assert_eq!((grid.columns, grid.rows, grid.centres.len()), (36, 18, 648));
    assert_eq!(grid.centres[0], (-85.0, -175.0));
    assert_eq!(grid.centres[647], (85.0, 175.0));
    // High in the north-east quarter only.
    let values: Vec<f64> =
        grid.centres.iter().map(|&(lat, lon)| if lat > 0.0 && lon > 0.0 { 0.9 } else { 0.0 }).collect();
    let path = dir.path().join("range.png");
    probability_map(&path, "range", 10.0, &values).unwrap();
    let image = decoded_png(&path);
    let red = |x: u32, y: u32| {
        let p = image.get_pixel(x, y).0;
        i32::from(p[0]) > i32::from(p[1]) + 40
    };
    // The plot spans roughly x 60–990, y 40–510: the north-east quarter is upper right.
    assert!(red(800, 150) && !red(200, 400), "coloured where the values are");
    assert!(probability_map(&path, "", 10.0, &values[1..]).is_err());
    let mut bad = values.clone();
    bad[3] = 1.5;
    assert!(probability_map(&path, "", 10.0, &bad).unwrap_err().to_string().contains("1.5"));
}
