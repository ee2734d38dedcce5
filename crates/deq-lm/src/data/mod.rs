//! Text: corpus readers (WikiText, PTB, folders of plain text), the word-level vocabulary as a
//! `tokenizers` file, and the zoo's batching of the token stream into columns and segments.

mod batches;
mod corpus;
mod vocab;

pub use batches::{batchify, Segments};
pub use corpus::{Corpus, Split, EOS};
pub use vocab::Vocab;
