//! Reducing repeated runs to the two figures reported: the best and the median.

/// Best (largest) and median of a set of rates (higher is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub best: f64,
    pub median: f64,
    pub runs: usize,
}

/// `None` for no runs. The median of an even count is the mean of the two middle values.
pub fn summarise(rates: &[f64]) -> Option<Summary> {
    if rates.is_empty() {
        return None;
    }
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Summary {
        best: sorted[n - 1],
        median,
        runs: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_the_largest_and_median_the_middle() {
        let s = summarise(&[3.0, 1.0, 2.0]);
        assert_eq!(
            s,
            Some(Summary {
                best: 3.0,
                median: 2.0,
                runs: 3
            })
        );
        assert_eq!(summarise(&[1.0, 4.0]).map(|s| s.median), Some(2.5));
        assert_eq!(summarise(&[]), None);
    }
}
