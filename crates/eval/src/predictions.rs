//! Per-image predictions: the top-k classes and their probabilities, written as CSV or Parquet.
//!
//! One row per image: `image_id`, `file`, `label`, `label_name`, `correct` (top-1), then
//! `class_1`, `name_1`, `probability_1`, … up to `k`.

use std::path::Path;

use polars::prelude::{Column, DataFrame, ParquetWriter};

use crate::EvalError;

/// One image's likeliest classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The image's row in its source (the split's record index).
    pub row: usize,
    pub label: u32,
    /// `(class, probability)`, likeliest first; ties keep the lower class first.
    pub top_k: Vec<(u32, f32)>,
}

impl Prediction {
    /// The `k` likeliest classes of a probability row.
    pub fn from_probabilities(row: usize, label: u32, probabilities: &[f32], k: usize) -> Self {
        let mut order: Vec<u32> = (0..probabilities.len() as u32).collect();
        order.sort_by(|a, b| probabilities[*b as usize].total_cmp(&probabilities[*a as usize]).then(a.cmp(b)));
        let top_k = order.into_iter().take(k).map(|c| (c, probabilities[c as usize])).collect();
        Self { row, label, top_k }
    }
}

/// A prediction with what identifies its image.
#[derive(Debug, Clone, Copy)]
pub struct PredictionRecord<'a> {
    pub image_id: u64,
    pub file: &'a str,
    pub prediction: &'a Prediction,
}

/// The file format, from a path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionFormat {
    Csv,
    Parquet,
}

impl PredictionFormat {
    /// `.csv` or `.parquet`; anything else is an error naming the path.
    pub fn from_path(path: &Path) -> Result<Self, EvalError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("parquet") => Ok(Self::Parquet),
            _ => Err(EvalError::Io {
                path: path.to_owned(),
                message: "a predictions file must end in .csv or .parquet".into(),
            }),
        }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Io { path: path.to_owned(), message: e.to_string() }
}

/// Writes `records` to `path` (through a temporary file and a rename), naming classes by
/// `class_names` (indexed by class).
pub fn write_predictions(
    path: &Path,
    records: &[PredictionRecord<'_>],
    class_names: &[String],
) -> Result<(), EvalError> {
    let format = PredictionFormat::from_path(path)?;
    let k = records.iter().map(|r| r.prediction.top_k.len()).max().unwrap_or(0);
    let name = |class: u32| -> Result<&str, EvalError> {
        class_names
            .get(class as usize)
            .map(String::as_str)
            .ok_or_else(|| EvalError::Data(format!("class {class} has no name ({} class names)", class_names.len())))
    };
    let tmp = path.with_extension("tmp");
    match format {
        PredictionFormat::Csv => {
            let mut writer = csv::Writer::from_path(&tmp).map_err(|e| io_err(&tmp, e))?;
            let mut header: Vec<String> =
                ["image_id", "file", "label", "label_name", "correct"].map(String::from).to_vec();
            for j in 1..=k {
                header.extend([format!("class_{j}"), format!("name_{j}"), format!("probability_{j}")]);
            }
            writer.write_record(&header).map_err(|e| io_err(&tmp, e))?;
            for r in records {
                let p = r.prediction;
                let correct = p.top_k.first().is_some_and(|(c, _)| *c == p.label);
                let mut line = vec![
                    r.image_id.to_string(),
                    r.file.to_owned(),
                    p.label.to_string(),
                    name(p.label)?.to_owned(),
                    correct.to_string(),
                ];
                for j in 0..k {
                    match p.top_k.get(j) {
                        Some((class, prob)) => {
                            line.extend([class.to_string(), name(*class)?.to_owned(), prob.to_string()])
                        }
                        None => line.extend([String::new(), String::new(), String::new()]),
                    }
                }
                writer.write_record(&line).map_err(|e| io_err(&tmp, e))?;
            }
            writer.flush().map_err(|e| io_err(&tmp, e))?;
        }
        PredictionFormat::Parquet => {
            let mut columns = vec![
                Column::new("image_id".into(), records.iter().map(|r| r.image_id).collect::<Vec<u64>>()),
                Column::new("file".into(), records.iter().map(|r| r.file.to_owned()).collect::<Vec<String>>()),
                Column::new("label".into(), records.iter().map(|r| r.prediction.label).collect::<Vec<u32>>()),
                Column::new(
                    "label_name".into(),
                    records
                        .iter()
                        .map(|r| name(r.prediction.label).map(str::to_owned))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Column::new(
                    "correct".into(),
                    records
                        .iter()
                        .map(|r| r.prediction.top_k.first().is_some_and(|(c, _)| *c == r.prediction.label))
                        .collect::<Vec<bool>>(),
                ),
            ];
            for j in 0..k {
                let at = |r: &PredictionRecord<'_>| r.prediction.top_k.get(j).copied();
                let names = records
                    .iter()
                    .map(|r| at(r).map(|(c, _)| name(c).map(str::to_owned)).transpose())
                    .collect::<Result<Vec<Option<String>>, _>>()?;
                columns.push(Column::new(
                    format!("class_{}", j + 1).into(),
                    records.iter().map(|r| at(r).map(|(c, _)| c)).collect::<Vec<Option<u32>>>(),
                ));
                columns.push(Column::new(format!("name_{}", j + 1).into(), names));
                columns.push(Column::new(
                    format!("probability_{}", j + 1).into(),
                    records.iter().map(|r| at(r).map(|(_, p)| p)).collect::<Vec<Option<f32>>>(),
                ));
            }
            let mut frame = DataFrame::new_infer_height(columns).map_err(|e| io_err(path, e))?;
            let file = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            ParquetWriter::new(file).finish(&mut frame).map_err(|e| io_err(&tmp, e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_k_is_sorted_by_probability_with_ties_to_the_lower_class() {
        let p = Prediction::from_probabilities(4, 2, &[0.1, 0.3, 0.3, 0.2, 0.1], 3);
        assert_eq!(p.top_k, vec![(1, 0.3), (2, 0.3), (3, 0.2)]);
        assert_eq!(p.row, 4);
    }

    #[test]
    fn csv_predictions_hold_one_row_per_image_with_names_and_probabilities() {
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["oak", "ash", "elm"].map(String::from).to_vec();
        let a = Prediction::from_probabilities(0, 1, &[0.2, 0.7, 0.1], 2);
        let b = Prediction::from_probabilities(1, 0, &[0.1, 0.2, 0.7], 2);
        let records = [
            PredictionRecord { image_id: 10, file: "a.jpg", prediction: &a },
            PredictionRecord { image_id: 11, file: "b, with comma.jpg", prediction: &b },
        ];
        let path = tmp.path().join("p.csv");
        write_predictions(&path, &records, &names).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "image_id,file,label,label_name,correct,class_1,name_1,probability_1,class_2,name_2,probability_2"
        );
        assert_eq!(lines[1], "10,a.jpg,1,ash,true,1,ash,0.7,0,oak,0.2");
        assert_eq!(lines[2], "11,\"b, with comma.jpg\",0,oak,false,2,elm,0.7,1,ash,0.2");
        let parquet = tmp.path().join("p.parquet");
        write_predictions(&parquet, &records, &names).unwrap();
        use polars::prelude::SerReader;
        let frame = polars::prelude::ParquetReader::new(std::fs::File::open(&parquet).unwrap()).finish().unwrap();
        assert_eq!(frame.height(), 2);
        assert_eq!(frame.width(), 11);
        assert!(write_predictions(&tmp.path().join("p.txt"), &records, &names).is_err());
        assert!(write_predictions(&path, &records, &names[..1]).is_err(), "a class without a name");
    }
}
