//! The price table: `models.csv` (`model,input_price_per_1M,output_price_per_1M`, other columns
//! ignored) or TOML (`[models.NAME] input_price_per_1M = …, output_price_per_1M = …`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::data::read_frame;
use crate::error::{Result, TrainError};

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(rename = "input_price_per_1M")]
    pub input_per_1m: f64,
    #[serde(rename = "output_price_per_1M")]
    pub output_per_1m: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPrices {
    models: BTreeMap<String, Price>,
}

/// What to do with a model of the data that the price table gives no price (a blank or
/// non-numeric cell, or no row at all).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum MissingPrice {
    /// Leave the model out of the router, with a warning naming it (the default).
    #[default]
    Drop,
    /// Price it at this (`--default-price IN,OUT`).
    Default(Price),
    /// Fail (`--strict`).
    Strict,
}

/// A price table: the models it prices, and those whose row has a blank or non-numeric price
/// (with the row number, for errors).
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    pub prices: HashMap<String, Price>,
    pub unpriced: HashMap<String, usize>,
}

impl PriceTable {
    /// The price of `model` under `missing`: `Ok(None)` to leave it out; an error naming the
    /// row (or the model's absence) under [`MissingPrice::Strict`].
    pub fn price_of(
        &self,
        model: &str,
        missing: MissingPrice,
        path: &Path,
    ) -> Result<Option<Price>> {
        if let Some(p) = self.prices.get(model) {
            return Ok(Some(*p));
        }
        match missing {
            MissingPrice::Drop => Ok(None),
            MissingPrice::Default(p) => Ok(Some(p)),
            MissingPrice::Strict => Err(match self.unpriced.get(model) {
                Some(row) => TrainError::Prices {
                    path: path.to_owned(),
                    message: format!(
                        "row {row}: model `{model}` has a missing or non-numeric price"
                    ),
                },
                None => TrainError::ModelWithoutPrice {
                    path: path.to_owned(),
                    model: model.to_owned(),
                },
            }),
        }
    }
}

/// Parses `IN,OUT` (USD per million input and output tokens).
pub fn parse_price(text: &str) -> std::result::Result<Price, String> {
    let (input, output) = text
        .split_once(',')
        .ok_or_else(|| format!("`{text}`: expected IN,OUT (USD per million tokens)"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("`{s}` is not a non-negative number"))
    };
    Ok(Price {
        input_per_1m: number(input)?,
        output_per_1m: number(output)?,
    })
}

/// Reads a price table, by extension.
pub fn load_prices(path: &Path) -> Result<PriceTable> {
    let fail = |message: String| TrainError::Prices {
        path: path.to_owned(),
        message,
    };
    let mut unpriced = HashMap::new();
    let prices: HashMap<String, Price> = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            let parsed: TomlPrices = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
            parsed.models.into_iter().collect()
        }
        Some("csv") => {
            let df = read_frame(path)?;
            let get = |name: &'static str| {
                df.column(name).map_err(|_| TrainError::MissingColumn {
                    path: path.to_owned(),
                    column: name,
                    found: df
                        .get_column_names()
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            };
            let models = get("model")?
                .cast(&polars::prelude::DataType::String)
                .map_err(|e| fail(e.to_string()))?;
            let models = models.str().map_err(|e| fail(e.to_string()))?;
            let price = |name: &'static str| -> Result<Vec<Option<f64>>> {
                let c = get(name)?
                    .cast(&polars::prelude::DataType::Float64)
                    .map_err(|e| fail(format!("column `{name}`: {e}")))?;
                Ok(c.f64().map_err(|e| fail(e.to_string()))?.iter().collect())
            };
            let (input, output) = (price("input_price_per_1M")?, price("output_price_per_1M")?);
            let mut out = HashMap::new();
            for (i, model) in models.iter().enumerate() {
                let row = i + 1;
                let model = model.ok_or_else(|| fail(format!("row {row}: empty model")))?;
                let (Some(inp), Some(outp)) = (input[i], output[i]) else {
                    unpriced.insert(model.trim().to_owned(), row);
                    continue;
                };
                out.insert(
                    model.trim().to_owned(),
                    Price {
                        input_per_1m: inp,
                        output_per_1m: outp,
                    },
                );
            }
            out
        }
        _ => {
            return Err(fail(
                "unknown extension (expected .csv or .toml)".to_owned(),
            ));
        }
    };
    for (model, p) in &prices {
        if !(p.input_per_1m.is_finite() && p.output_per_1m.is_finite())
            || p.input_per_1m < 0.0
            || p.output_per_1m < 0.0
        {
            return Err(fail(format!(
                "model `{model}` has a negative or non-finite price"
            )));
        }
    }
    Ok(PriceTable { prices, unpriced })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_price_leaves_the_model_out_unless_strict_or_defaulted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.csv");
        std::fs::write(
            &path,
            "model,input_price_per_1M,output_price_per_1M\na,1.0,2.0\nb,,\n",
        )
        .unwrap();
        let table = load_prices(&path).unwrap();
        assert_eq!(
            table.price_of("a", MissingPrice::Strict, &path).unwrap(),
            Some(Price {
                input_per_1m: 1.0,
                output_per_1m: 2.0
            })
        );
        assert_eq!(
            table.price_of("b", MissingPrice::Drop, &path).unwrap(),
            None
        );
        let default = parse_price("0.5, 1.5").unwrap();
        assert_eq!(
            table
                .price_of("b", MissingPrice::Default(default), &path)
                .unwrap(),
            Some(default)
        );
        let strict = table
            .price_of("b", MissingPrice::Strict, &path)
            .unwrap_err()
            .to_string();
        assert!(strict.contains("row 2: model `b`"), "{strict}");
        let absent = table
            .price_of("c", MissingPrice::Strict, &path)
            .unwrap_err()
            .to_string();
        assert!(absent.contains("`c` has no price"), "{absent}");
        assert!(parse_price("1").is_err());
        assert!(parse_price("1,-2").is_err());
    }
}
