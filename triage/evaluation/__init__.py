"""`triage evaluate`: metrics, strata, pictures and threshold search for a bundle or training runs."""
