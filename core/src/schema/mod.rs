//! Generated Cap'n Proto code (placeholder until the schemas land).
