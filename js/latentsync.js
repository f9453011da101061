// ComfyUI front-end extension for ComfyUI-LatentSync.
// LatentSync nodes that report something to the user (for example Face Crop & Align: how many frames
// had no face, and where) return it as `ui.text`; this shows that text on the node after it runs.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORT_WIDGET = "latentsync_report";

function showReport(node, lines) {
    const text = (Array.isArray(lines) ? lines : [lines]).join("\n");
    let widget = node.widgets?.find((w) => w.name === REPORT_WIDGET);
    if (!widget) {
        widget = ComfyWidgets["STRING"](node, REPORT_WIDGET, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.inputEl.style.opacity = 0.75;
        widget.serialize = false; // the report is output, never saved as a widget value in workflows
    }
    widget.value = text;
    node.setSize(node.computeSize());
    node.setDirtyCanvas(true, true);
}

app.registerExtension({
    name: "LatentSync.Report",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData.name.startsWith("LatentSync")) {
            return;
        }
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            onExecuted?.apply(this, arguments);
            if (message?.text?.length) {
                showReport(this, message.text);
            }
        };
    },
});
