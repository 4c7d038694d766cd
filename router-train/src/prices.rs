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

/// Reads a price table, by extension.
pub fn load_prices(path: &Path) -> Result<HashMap<String, Price>> {
    let fail = |message: String| TrainError::Prices {
        path: path.to_owned(),
        message,
    };
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
                    return Err(fail(format!(
                        "row {row}: model `{model}` has a missing or non-numeric price"
                    )));
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
    Ok(prices)
}
