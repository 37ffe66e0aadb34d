"""The core of the document question-answering system: everything a query needs."""
