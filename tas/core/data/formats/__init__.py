"""Upload formats: how an uploaded file becomes a dataset. One module per format, one registry.

- `upload`: the entry points. `read_upload` (the API calls it once and stores the schema it returns)
  and `load_upload` (a job re-reads the stored original with the schema's resolved options and
  refuses a result that no longer matches); `UploadOptions`, `ParsedUpload`, `info_from_schema`.
- `registry`: `FORMATS`, name → `Format` (sniff, reader), and `detect`, which tells the format from
  the content's magic bytes, the client's file name and, for a ZIP, its entry names.
- `base`: what a format implements (`Format`, `Probe`, `Contents`, `ReadOptions`); `common`: what
  the readers share (labels → task and classes, the sample and class checks).
- One reader per format: `csvfile` (a table with a label column), `npz` (arrays X and y),
  `image_folder` (a ZIP of class folders), `image_annotations` (a ZIP of images and a CSV of file
  name, label).

Adding a format is one module here that defines its reader and a `Format`, and one entry in
`registry.FORMATS`; the options it cannot use are declared on the `Format`, so `read_upload` refuses
them before the file is read.

The ZIP safety checks (`tas.core.data.archive`) and the image decoder (`tas.core.data.images`) stay
beside this package rather than in it: `/predict` decodes its images with the same `decode_image`
and refuses them with the same `UploadError`, and that path has nothing to do with upload formats.

Every refusal is an `UploadError` (a `DataError`) that names the form field to blame and what is
wrong where: the column and row, the archive entry, the image and its size. Archives are judged from
their central directory before any entry is read; images from their headers before they are
decoded. Nothing is extracted to disk and nothing is unpickled."""
