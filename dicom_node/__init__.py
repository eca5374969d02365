"""Everything DICOM: the node (SCP/SCU), the spool, study assembly, series to volumes, result writers."""
