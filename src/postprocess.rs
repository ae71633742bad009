//! What follows the model: the special tokens a post-processor wraps around a text
//! (`TemplateProcessing`, `RobertaProcessing`, `BertProcessing`), the offset trimming of
//! `ByteLevel` / `RobertaProcessing`, and the `truncation` / `padding` settings of a
//! tokenizer.json, applied as the reference applies them to a single sequence.

use crate::error::{Error, Result};

/// One item of a single-sequence template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    Ids(Vec<u32>),
    Sequence,
}

/// What `add_special_tokens=True` does to the ids of a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostProcessor {
    /// `None` when the post-processor adds nothing (absent, or ByteLevel).
    pub template: Option<Vec<TemplatePiece>>,
    /// `Some(add_prefix_space)` when offsets lose their leading and trailing spaces
    /// (`trim_offsets` of ByteLevel / RobertaProcessing).
    pub trim_offsets: Option<bool>,
}

impl PostProcessor {
    /// How many ids the template adds around one text.
    pub fn added_len(&self) -> usize {
        self.template.iter().flatten().map(|p| if let TemplatePiece::Ids(ids) = p { ids.len() } else { 0 }).sum()
    }
}

/// The reference's `process_offsets`: a token's leading and trailing spaces are not part of
/// its offsets (but the space `add_prefix_space` added before the first token stays).
pub fn trim_offsets(tokens: &[&str], offsets: &mut [(usize, usize)], add_prefix_space: bool) {
    let space = |c: char| c == 'Ġ' || c.is_whitespace();
    for (i, (token, offset)) in tokens.iter().zip(offsets.iter_mut()).enumerate() {
        let mut leading = token.chars().take_while(|&c| space(c)).count();
        let trailing = token.chars().rev().take_while(|&c| space(c)).count();
        if leading > 0 {
            let is_first = i == 0 || offset.0 == 0;
            if is_first && add_prefix_space && leading == 1 {
                leading = 0;
            }
            offset.0 = (offset.0 + leading).min(offset.1);
        }
        if trailing > 0 && offset.1 >= trailing {
            offset.1 = (offset.1 - trailing).max(offset.0);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Left,
    Right,
}

/// Which text of a pair gives up ids; for a single text "only second" cannot be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    LongestFirst,
    OnlyFirst,
    OnlySecond,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub max_length: usize,
    pub stride: usize,
    pub strategy: Strategy,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padding {
    /// `None`: the longest of the batch.
    pub fixed: Option<usize>,
    pub pad_to_multiple_of: Option<usize>,
    pub pad_id: u32,
    pub direction: Direction,
}

impl Truncation {
    /// Keeps `max_length` ids (minus what the template adds) of `ids` and `offsets`.
    pub fn apply(&self, added: usize, ids: &mut Vec<u32>, offsets: Option<&mut Vec<(usize, usize)>>) -> Result<()> {
        // A max_length below what the template adds truncates nothing in the reference (its
        // unsigned subtraction wraps around); so it does here.
        let Some(max) = self.max_length.checked_sub(added) else { return Ok(()) };
        if max >= ids.len() {
            return Ok(());
        }
        if self.strategy == Strategy::OnlySecond {
            return Err(Error::Invalid(format!(
                "truncation strategy \"OnlySecond\" cannot shorten a single text to max_length {}",
                self.max_length
            )));
        }
        if max > 0 && self.stride >= max {
            return Err(Error::Invalid(format!(
                "truncation stride {} must be less than max_length {} minus the {added} special tokens the template adds",
                self.stride, self.max_length
            )));
        }
        let range = match self.direction {
            Direction::Right => 0..max,
            Direction::Left => ids.len() - max..ids.len(),
        };
        *ids = ids[range.clone()].to_vec();
        if let Some(offsets) = offsets {
            *offsets = offsets[range].to_vec();
        }
        Ok(())
    }
}

impl Padding {
    /// The length every sequence of a batch whose longest has `longest` ids is padded to.
    pub fn target(&self, longest: usize) -> usize {
        let mut n = self.fixed.unwrap_or(longest);
        if let Some(m) = self.pad_to_multiple_of.filter(|&m| m > 0) {
            if n % m > 0 {
                n += m - n % m;
            }
        }
        n
    }

    pub fn apply(&self, target: usize, ids: &mut Vec<u32>, offsets: Option<&mut Vec<(usize, usize)>>) {
        let Some(n) = target.checked_sub(ids.len()).filter(|&n| n > 0) else { return };
        match self.direction {
            Direction::Right => ids.extend(std::iter::repeat(self.pad_id).take(n)),
            Direction::Left => {
                ids.splice(0..0, std::iter::repeat(self.pad_id).take(n));
            }
        }
        if let Some(offsets) = offsets {
            match self.direction {
                Direction::Right => offsets.extend(std::iter::repeat((0, 0)).take(n)),
                Direction::Left => {
                    offsets.splice(0..0, std::iter::repeat((0, 0)).take(n));
                }
            }
        }
    }
}
