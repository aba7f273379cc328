"""Kvasir-SEG, a second hospital's colonoscopy images: the new site of the site-adaptation
study (issue 38). Read where it lies (``../shared/data/kvasir-seg``; research-only licence,
never copied); only image ids are kept here (the split file)."""
