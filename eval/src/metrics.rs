//! The numbers a buyer asks for, as pure functions of cost–quality points.
//!
//! A *point* is `(cost, quality)`: mean cost per request and mean realised quality of some
//! routing policy on the test prompts.

use serde::Serialize;

/// A cost–quality point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub cost: f64,
    pub quality: f64,
}

/// Upper concave hull of `points`, sorted by cost (any mix of two points on it is reachable by
/// routing at random between them).
pub fn upper_hull(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.cost.is_finite() && p.quality.is_finite())
        .collect();
    sorted.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(b.quality.total_cmp(&a.quality))
    });
    sorted.dedup_by(|b, a| a.cost == b.cost); // keep the best quality at each cost
    let mut hull: Vec<Point> = Vec::new();
    for p in sorted {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // Drop b when it lies on or below the segment a → p.
            let cross = (b.cost - a.cost) * (p.quality - a.quality)
                - (b.quality - a.quality) * (p.cost - a.cost);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// The non-decreasing upper hull: the upper hull, cut where quality stops rising (spending
/// more never has to lower quality: one can always spend less).
pub fn non_decreasing_hull(points: &[Point]) -> Vec<Point> {
    let hull = upper_hull(points);
    let mut out: Vec<Point> = Vec::new();
    for p in hull {
        if out.last().is_none_or(|last| p.quality > last.quality) {
            out.push(p);
        }
    }
    out
}

/// Quality of a hull (sorted by cost) at `cost`, interpolated, extended flat on both sides.
pub fn hull_quality_at(hull: &[Point], cost: f64) -> Option<f64> {
    let first = hull.first()?;
    let last = hull.last()?;
    if cost <= first.cost {
        return Some(first.quality);
    }
    if cost >= last.cost {
        return Some(last.quality);
    }
    hull.windows(2).find(|w| cost <= w[1].cost).map(|w| {
        let t = (cost - w[0].cost) / (w[1].cost - w[0].cost);
        w[0].quality + t * (w[1].quality - w[0].quality)
    })
}

/// RouterBench's AIQ: the mean over `[c_min, c_max]` of the router's non-decreasing upper hull
/// (extended flat), i.e. the area under it divided by the cost range.
pub fn aiq(points: &[Point], c_min: f64, c_max: f64) -> Option<f64> {
    let hull = non_decreasing_hull(points);
    if hull.is_empty() || c_max.partial_cmp(&c_min) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    // Integrate the piecewise-linear curve exactly over its breakpoints inside the range.
    let mut xs: Vec<f64> = vec![c_min, c_max];
    xs.extend(
        hull.iter()
            .map(|p| p.cost)
            .filter(|&c| c > c_min && c < c_max),
    );
    xs.sort_by(f64::total_cmp);
    let mut area = 0.0;
    for w in xs.windows(2) {
        let (a, b) = (hull_quality_at(&hull, w[0])?, hull_quality_at(&hull, w[1])?);
        area += (w[1] - w[0]) * (a + b) / 2.0;
    }
    Some(area / (c_max - c_min))
}

/// Largest cost cut `1 − c / best_cost` among points with quality ≥ `target`; negative when
/// the target is reached only at a higher cost; `None` when never reached.
pub fn savings_reaching(points: &[Point], target: f64, best_cost: f64) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.quality >= target - 1e-12)
        .map(|p| 1.0 - p.cost / best_cost)
        .max_by(f64::total_cmp)
}

/// Best quality among points that cost at most `budget`.
pub fn quality_at_cost(points: &[Point], budget: f64) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.cost <= budget * (1.0 + 1e-9))
        .map(|p| p.quality)
        .max_by(f64::total_cmp)
}

/// A point of a two-model router: share of calls to the strong model and the performance gap
/// recovered, `(q − q_weak) / (q_strong − q_weak)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PgrPoint {
    pub strong_share: f64,
    pub pgr: f64,
}

/// The PGR curve, sorted by strong share, with the two end points (all weak: 0, all strong: 1)
/// and the best PGR at each share.
fn pgr_curve(points: &[PgrPoint]) -> Vec<PgrPoint> {
    let mut all: Vec<PgrPoint> = points.to_vec();
    all.push(PgrPoint {
        strong_share: 0.0,
        pgr: 0.0,
    });
    all.push(PgrPoint {
        strong_share: 1.0,
        pgr: 1.0,
    });
    all.sort_by(|a, b| {
        a.strong_share
            .total_cmp(&b.strong_share)
            .then(b.pgr.total_cmp(&a.pgr))
    });
    all.dedup_by(|b, a| a.strong_share == b.strong_share);
    all
}

/// RouteLLM's APGR: the area under PGR against the share of calls to the strong model.
pub fn apgr(points: &[PgrPoint]) -> f64 {
    pgr_curve(points)
        .windows(2)
        .map(|w| (w[1].strong_share - w[0].strong_share) * (w[0].pgr + w[1].pgr) / 2.0)
        .sum()
}

/// RouteLLM's CPT(x): the smallest share of strong-model calls at which PGR reaches `x`
/// (interpolated along the curve).
pub fn cpt(points: &[PgrPoint], x: f64) -> f64 {
    let curve = pgr_curve(points);
    for w in curve.windows(2) {
        if w[0].pgr >= x {
            return w[0].strong_share;
        }
        if w[1].pgr >= x {
            let t = (x - w[0].pgr) / (w[1].pgr - w[0].pgr);
            return w[0].strong_share + t * (w[1].strong_share - w[0].strong_share);
        }
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost: f64, quality: f64) -> Point {
        Point { cost, quality }
    }

    #[test]
    fn hull_drops_dominated_and_interior_points() {
        // (2, 0.5) lies under the segment (1, 0.4) → (3, 0.9); (4, 0.7) is dominated by (3, 0.9)
        // but still on the upper hull; the non-decreasing hull cuts it.
        let pts = [p(1.0, 0.4), p(2.0, 0.5), p(3.0, 0.9), p(4.0, 0.7)];
        assert_eq!(
            upper_hull(&pts),
            vec![p(1.0, 0.4), p(3.0, 0.9), p(4.0, 0.7)]
        );
        assert_eq!(non_decreasing_hull(&pts), vec![p(1.0, 0.4), p(3.0, 0.9)]);
    }

    #[test]
    fn aiq_by_hand() {
        // Hull (1, 0.4) → (3, 0.9), flat after; over [1, 5]:
        // area = 2 × (0.4 + 0.9) / 2 + 2 × 0.9 = 1.3 + 1.8 = 3.1 → AIQ = 3.1 / 4 = 0.775.
        let pts = [p(1.0, 0.4), p(2.0, 0.5), p(3.0, 0.9), p(4.0, 0.7)];
        let a = aiq(&pts, 1.0, 5.0).unwrap_or_default();
        assert!((a - 0.775).abs() < 1e-12, "{a}");
        assert_eq!(aiq(&pts, 2.0, 2.0), None);
    }

    #[test]
    fn savings_and_quality_at_cost_by_hand() {
        let pts = [p(1.0, 0.70), p(2.0, 0.80), p(4.0, 0.85)];
        // Best single: cost 5, quality 0.80 → parity at cost 2 saves 60 %.
        assert_eq!(savings_reaching(&pts, 0.80, 5.0), Some(0.6));
        // Within 5 %: target 0.76 → still the cost-2 point.
        assert_eq!(savings_reaching(&pts, 0.80 * 0.95, 5.0), Some(0.6));
        // Quality 0.85 only at cost 4 of a 2-cost best: −100 % (costs double).
        assert_eq!(savings_reaching(&pts, 0.85, 2.0), Some(-1.0));
        assert_eq!(savings_reaching(&pts, 0.9, 5.0), None);
        assert_eq!(quality_at_cost(&pts, 2.0), Some(0.80));
        assert_eq!(quality_at_cost(&pts, 0.5), None);
    }

    #[test]
    fn apgr_of_known_two_model_curves() {
        // Random routing: PGR equals the strong share → APGR 0.5, CPT(50 %) = 0.5.
        let random: Vec<PgrPoint> = (0..=10)
            .map(|i| PgrPoint {
                strong_share: f64::from(i) / 10.0,
                pgr: f64::from(i) / 10.0,
            })
            .collect();
        assert!((apgr(&random) - 0.5).abs() < 1e-12);
        assert!((cpt(&random, 0.5) - 0.5).abs() < 1e-12);
        // A router that recovers the whole gap with 20 % strong calls:
        // area = 0.2 × 0.5 + 0.8 × 1 = 0.9; CPT(50 %) = 0.1, CPT(80 %) = 0.16.
        let good = [PgrPoint {
            strong_share: 0.2,
            pgr: 1.0,
        }];
        assert!((apgr(&good) - 0.9).abs() < 1e-12);
        assert!((cpt(&good, 0.5) - 0.1).abs() < 1e-12);
        assert!((cpt(&good, 0.8) - 0.16).abs() < 1e-12);
    }
}
