"""Reading site data: layouts, NIfTI checks, clinical-label harmonisation."""
