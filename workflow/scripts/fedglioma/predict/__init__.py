"""Using a trained model on new patients: the model bundle (:mod:`.bundle`), prediction of one patient from
NIfTI files or DICOM series (:mod:`.patient`), and its one-page report (:mod:`.page`)."""
