//! Text tables for a person, as istioctl's tabwriter printed them: every column but the last
//! as wide as its widest cell plus five spaces.

use std::fmt::Write as _;

const PADDING: usize = 5;

/// `rows` (the header first) as aligned lines, each ending in a newline.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<0$}", widths[i] + PADDING);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_the_widest_cell_plus_five_and_the_last_is_not_padded() {
        let rows = [
            ["A".to_string(), "BB".to_string(), "C".to_string()],
            ["aaa".to_string(), "b".to_string(), "c".to_string()],
        ];
        assert_eq!(render(&rows), "A       BB     C\naaa     b      c\n");
    }
}
