//! Text: corpus readers (WikiText, PTB, folders of plain text), the vocabulary as a
//! `tokenizers` file (word level or byte-level BPE), the token streams cached next to the data,
//! and the zoo's batching of the token stream into columns and segments.

mod batches;
pub mod cache;
mod corpus;
mod load;
mod vocab;

pub use batches::{batchify, Segments};
pub use corpus::{read_lines, words_of, Corpus, Split, EOS};
pub use load::{build_vocab, load_ids, vocab_for, TextOptions};
pub use vocab::{Vocab, VocabKind, UNK};
