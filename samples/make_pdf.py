"""Writes samples/docs/helios-h10-warranty.pdf, the sample corpus's PDF (three pages, text layer).

Run once when the text changes: `.venv/bin/python samples/make_pdf.py`.  The PDF is committed so
the demo needs no PDF library; each page holds distinct facts so citations can be checked by page.
"""

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

PAGES = [
    (
        "Helios H10 Limited Warranty",
        [
            "This warranty is given by Northwind Energy GmbH to the first owner of a Helios H10 home battery "
            "and to any later owner of the same installation.",
            "Register the battery in the Northwind app within 60 days of installation. An unregistered "
            "battery is covered for five years only.",
        ],
    ),
    (
        "Warranty period and capacity guarantee",
        [
            "The battery module is covered for ten years from the date of installation, or until it has "
            "delivered 30 MWh of energy, whichever comes first.",
            "During the warranty period the usable capacity will not fall below 70 percent of the original "
            "10 kWh. If it does, Northwind Energy repairs or replaces the module free of charge.",
            "The inverter and the communication module are covered for five years.",
        ],
    ),
    (
        "What the warranty does not cover",
        [
            "Damage from flooding, fire, lightning or installation by a person who is not Northwind-certified.",
            "Opening the casing voids the warranty. So does operating the battery outside -10 to 50 degrees "
            "Celsius for more than 24 hours in a row.",
            "To make a claim, call support with the serial number that starts with NW-H10-.",
        ],
    ),
]


def main() -> None:
    out = Path(__file__).parent / "docs" / "helios-h10-warranty.pdf"
    styles = getSampleStyleSheet()
    story = []
    for i, (title, paragraphs) in enumerate(PAGES):
        story.append(Paragraph(title, styles["Heading1"]))
        for text in paragraphs:
            story += [Paragraph(text, styles["BodyText"]), Spacer(1, 8)]
        if i < len(PAGES) - 1:
            story.append(PageBreak())
    doc = SimpleDocTemplate(str(out), pagesize=A4, title="Helios H10 Limited Warranty", invariant=1)
    doc.build(story)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
