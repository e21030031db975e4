//! A bulk import of the directory (`kci import directory`): one row as
//! read and checked, what the store saw for it, and what became of it.
//! The rule deciding is `directory::import::decide`, handed to the store.

use super::{Account, Contact, Destination};

/// One checked line of an import file: an account, perhaps a contact of
/// it, perhaps a destination of that contact.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// Where it was read, for the report.
    pub line: u64,
    /// The account as the row states it, or with the API's defaults.
    pub account: Account,
    /// Whether the row states the account's settings (else: as stored,
    /// or new with the defaults).
    pub account_given: bool,
    pub contact: Option<Contact>,
    /// Whether the row states the contact's settings.
    pub contact_given: bool,
    /// Its id is fresh unless `destination_id_given`.
    pub destination: Option<Destination>,
    pub destination_id_given: bool,
}

/// What the store read for a row: its account as it stands now (earlier
/// rows of the batch written), with its contacts and destinations.
#[derive(Debug, Clone, Copy)]
pub struct ImportSeen<'a> {
    pub account: Option<&'a Account>,
    pub contacts: &'a [Contact],
    pub destinations: &'a [Destination],
    /// The account was created by this import batch: nobody was told at
    /// any of its destinations before, so nothing about it is protected.
    pub fresh: bool,
    /// The destination id the row names belongs to another account.
    pub id_elsewhere: bool,
}

/// What became of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Something of it was new.
    Created,
    /// Nothing new, something changed.
    Updated,
    Unchanged,
    /// Nothing of it written; why.
    Refused(String),
}

/// A write a row's decision asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportWrite {
    /// Create or replace the account.
    Account(Account),
    /// Create or replace a contact of the row's account.
    Contact(Contact),
    /// Add a destination to the row's account.
    Destination(Destination),
    /// Mark the destination with this id verified.
    Verify(String),
}

/// Decides a row against what the store saw: the outcome, and the writes
/// (none when refused or unchanged).
pub type ImportRule = fn(&ImportSeen<'_>, &ImportRow) -> (ImportOutcome, Vec<ImportWrite>);

/// How many rows came to each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub refused: u64,
}

impl ImportCounts {
    pub fn add(&mut self, o: &ImportOutcome) {
        match o {
            ImportOutcome::Created => self.created += 1,
            ImportOutcome::Updated => self.updated += 1,
            ImportOutcome::Unchanged => self.unchanged += 1,
            ImportOutcome::Refused(_) => self.refused += 1,
        }
    }

    pub fn merge(&mut self, o: ImportCounts) {
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.refused += o.refused;
    }

    pub fn rows(&self) -> u64 {
        self.created + self.updated + self.unchanged + self.refused
    }
}

impl std::fmt::Display for ImportCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} updated, {} unchanged, {} refused",
            self.created, self.updated, self.unchanged, self.refused
        )
    }
}

/// Rows for the store to import in one transaction, with one audit entry.
#[derive(Debug, Clone)]
pub struct ImportBatch {
    pub rows: Vec<ImportRow>,
    /// Who imports (the audit entry's actor).
    pub actor: String,
    /// What is imported, as the audit entry names it (`customers.csv
    /// lines 2–5001`).
    pub what: String,
    /// Rows refused before they reached the store (unreadable, invalid):
    /// counted in the audit entry too.
    pub refused_before: u64,
    /// When (the audit entry's time).
    pub at: chrono::DateTime<chrono::Utc>,
}
