// ComfyUI front-end extension for ComfyUI-LatentSync.
// 1. LatentSync nodes that report something to the user (for example Face Crop & Align: how many frames
//    had no face, and where) return it as `ui.text`; this shows that text on the node after it runs.
// 2. LatentSync Load Audio gets the audio player widget core Load Audio has: the front end's audio
//    upload button expects an `audioUI` widget on the node and fails without one.
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

// Insert `audioUI` right after the `audio` input (as core does for LoadAudio): a front-end-only widget
// (the player), never sent to the server nor saved in widget values.
function addAudioPlayer(nodeData) {
    const required = nodeData.input?.required;
    if (!required || !("audio" in required) || "audioUI" in required) {
        return;
    }
    const rebuilt = {};
    for (const [name, spec] of Object.entries(required)) {
        rebuilt[name] = spec;
        if (name === "audio") {
            rebuilt.audioUI = ["AUDIO_UI", {}];
        }
    }
    nodeData.input.required = rebuilt;
}

app.registerExtension({
    name: "LatentSync.Report",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData.name.startsWith("LatentSync")) {
            return;
        }
        if (nodeData.name === "LatentSyncLoadAudio") {
            addAudioPlayer(nodeData);
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
